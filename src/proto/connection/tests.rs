//! The connection machine on a virtual clock against a scripted peer, or
//! against another machine: no sockets, no sleeping.

use super::*;
use crate::proto::{encode_frame, ProtocolError};

fn secs(s: u64) -> Duration {
    Duration::from_secs(s)
}

/// Keepalive: ping after 10 s of silence, close 5 s later; 3 s for the close
/// handshake, 2 s for the upgrade; a small send budget.
fn config() -> Config {
    Config {
        limits: Limits { max_frame_size: 1000, ..Limits::default() },
        keepalive: Some(Keepalive { idle: secs(10), timeout: secs(5), close_code: CloseCode::GOING_AWAY }),
        handshake_timeout: secs(2),
        close_timeout: secs(3),
        max_buffered: 64,
    }
}

/// A frame as the peer sees it.
#[derive(Debug, PartialEq, Eq)]
enum Frame {
    Text(String),
    Ping(Vec<u8>),
    Pong(Vec<u8>),
    Close(Option<u16>, String),
}

/// A scripted peer of the other role: it frames what it sends as that role
/// must, and decodes what the machine wrote.
struct Peer {
    decoder: Decoder,
    mask: Option<[u8; 4]>,
}

impl Peer {
    /// The client facing a server machine (it masks).
    fn client() -> Peer {
        Peer { decoder: Decoder::new(Role::Client), mask: Some([0x11, 0x22, 0x33, 0x44]) }
    }

    /// The server facing a client machine.
    fn server() -> Peer {
        Peer { decoder: Decoder::new(Role::Server), mask: None }
    }

    fn frame(&self, opcode: OpCode, payload: &[u8]) -> Vec<u8> {
        let mut bytes = Vec::new();
        encode_frame(&mut bytes, opcode, true, self.mask, payload);
        bytes
    }

    fn close(&self, code: u16, reason: &str) -> Vec<u8> {
        let mut payload = code.to_be_bytes().to_vec();
        payload.extend_from_slice(reason.as_bytes());
        self.frame(OpCode::Close, &payload)
    }

    /// Everything the machine wrote since the last call.
    fn read(&mut self, out: &mut Vec<u8>) -> Vec<Frame> {
        let mut frames = Vec::new();
        let mut pos = 0;
        while pos < out.len() {
            let decoded =
                self.decoder.decode(&mut out[pos..], &Limits::default()).expect("the machine writes valid frames");
            pos += decoded.consumed;
            frames.extend(decoded.event.map(|event| match event {
                Event::Message(Message::Text(text)) => Frame::Text(text.to_string()),
                Event::Ping(payload) => Frame::Ping(payload.to_vec()),
                Event::Pong(payload) => Frame::Pong(payload.to_vec()),
                Event::Close(code, reason) => Frame::Close(code.map(|c| c.0), reason.to_string()),
                other => panic!("unexpected {other:?}"),
            }));
        }
        out.clear();
        frames
    }
}

/// What the application was handed, owned.
#[derive(Debug)]
enum Got {
    Text(String),
    Pong(Vec<u8>),
    Ended(CloseReason),
}

impl PartialEq for Got {
    /// Ends compare by what the peer and the application see: code and reason.
    fn eq(&self, other: &Got) -> bool {
        match (self, other) {
            (Got::Text(a), Got::Text(b)) => a == b,
            (Got::Pong(a), Got::Pong(b)) => a == b,
            (Got::Ended(a), Got::Ended(b)) => a.code() == b.code() && a.reason() == b.reason(),
            _ => false,
        }
    }
}

/// One transport read of `input` at `now`, driven as the call order says.
fn feed(conn: &mut Connection, mut input: Vec<u8>, now: Instant, out: &mut impl Output) -> Vec<Got> {
    let config = config();
    conn.handle_read(now, &config);
    let mut got = Vec::new();
    let mut pos = 0;
    while pos < input.len() && conn.can_read() {
        let decoded = conn.decode(&mut input[pos..], now, &config, out);
        pos += decoded.used;
        got.extend(decoded.received.map(|received| match received {
            Received::Message(Message::Text(text)) => Got::Text(text.to_string()),
            Received::Pong(payload) => Got::Pong(payload.to_vec()),
            other => panic!("unexpected {other:?}"),
        }));
        got.extend(decoded.ended.map(Got::Ended));
    }
    conn.release_buffers();
    got
}

fn open_server(now: Instant) -> Connection {
    let mut conn = Connection::server(now, &config());
    conn.open(now, &config());
    conn
}

#[test]
fn keepalive_pings_after_idle_then_closes_with_its_code_then_drops() {
    let (t0, mut out, mut peer) = (Instant::now(), Vec::new(), Peer::client());
    let mut conn = open_server(t0);
    assert_eq!(conn.poll_timeout(), Some(t0 + secs(10)));
    conn.handle_timeout(t0 + secs(9), &config(), &mut out);
    assert!(out.is_empty(), "not due yet");
    conn.handle_timeout(t0 + secs(10), &config(), &mut out);
    assert_eq!(peer.read(&mut out), [Frame::Ping(Vec::new())]);
    assert_eq!((conn.timer(), conn.poll_timeout()), (Some(Timer::Pong), Some(t0 + secs(15))));
    assert!(!conn.has_ended());
    let ended = conn.handle_timeout(t0 + secs(15), &config(), &mut out);
    assert_eq!(peer.read(&mut out), [Frame::Close(Some(1001), "keepalive timeout".into())]);
    // The application hears now, while the close handshake still runs.
    assert!(matches!(ended, Some(CloseReason::KeepaliveTimeout(CloseCode::GOING_AWAY))), "{ended:?}");
    assert!(!conn.is_open() && conn.can_read() && conn.has_ended());
    assert_eq!(conn.poll_timeout(), Some(t0 + secs(18)));
    let ended = conn.handle_timeout(t0 + secs(18), &config(), &mut out);
    assert!(conn.is_finished() && out.is_empty());
    assert!(ended.is_none(), "the end is handed out once: the first reason stays");
}

#[test]
fn a_slow_peer_that_answers_the_keepalive_close_ends_cleanly() {
    let (t0, mut out, mut peer) = (Instant::now(), Vec::new(), Peer::client());
    let mut conn = open_server(t0);
    conn.handle_timeout(t0 + secs(10), &config(), &mut out);
    let ended = conn.handle_timeout(t0 + secs(15), &config(), &mut out);
    assert!(matches!(ended, Some(CloseReason::KeepaliveTimeout(_))));
    peer.read(&mut out);
    assert!(feed(&mut conn, peer.close(1001, ""), t0 + secs(16), &mut out).is_empty(), "ended already");
    assert!(out.is_empty(), "our close went already: no second one");
    assert!(conn.is_closed() && !conn.is_finished());
}

#[test]
fn traffic_postpones_the_keepalive_ping_and_any_answer_counts() {
    let (t0, mut out, mut peer) = (Instant::now(), Vec::new(), Peer::client());
    let mut conn = open_server(t0);
    assert_eq!(feed(&mut conn, peer.frame(OpCode::Text, b"hi"), t0 + secs(8), &mut out), [Got::Text("hi".into())]);
    assert_eq!(conn.poll_timeout(), Some(t0 + secs(18)));
    conn.handle_timeout(t0 + secs(18), &config(), &mut out);
    assert_eq!(peer.read(&mut out), [Frame::Ping(Vec::new())]);
    assert_eq!(feed(&mut conn, peer.frame(OpCode::Pong, b""), t0 + secs(19), &mut out), [Got::Pong(Vec::new())]);
    assert_eq!((conn.timer(), conn.poll_timeout()), (Some(Timer::Idle), Some(t0 + secs(29))));
}

#[test]
fn an_upgrade_that_never_completes_is_dropped_at_the_handshake_deadline() {
    let (t0, mut out) = (Instant::now(), Vec::new());
    let mut conn = Connection::server(t0, &config());
    assert_eq!((conn.timer(), conn.poll_timeout()), (Some(Timer::Handshake), Some(t0 + secs(2))));
    assert!(conn.handle_timeout(t0 + secs(1), &config(), &mut out).is_none());
    assert!(!conn.is_finished());
    let ended = conn.handle_timeout(t0 + secs(2), &config(), &mut out);
    assert!(conn.is_finished() && out.is_empty(), "no close frame before the upgrade");
    assert!(matches!(ended, Some(CloseReason::HandshakeTimeout)));
}

#[test]
fn a_refused_upgrade_sends_nothing_more_and_is_dropped_at_the_close_deadline() {
    let (t0, mut out, peer) = (Instant::now(), Vec::new(), Peer::client());
    let mut conn = Connection::server(t0, &config());
    conn.reject(t0 + secs(1), &config());
    assert!(conn.is_closed() && !conn.can_read() && !conn.is_open());
    assert!(conn.has_ended(), "a connection that never opened has no reason to hand out");
    assert!(feed(&mut conn, peer.frame(OpCode::Text, b"ignored"), t0 + secs(1), &mut out).is_empty());
    assert!(!conn.send(OpCode::Text, 0, b"no", &mut out) && out.is_empty());
    assert_eq!((conn.timer(), conn.poll_timeout()), (Some(Timer::Close), Some(t0 + secs(4))));
    assert!(conn.handle_timeout(t0 + secs(4), &config(), &mut out).is_none());
    assert!(conn.is_finished());
}

#[test]
fn a_peer_that_never_answers_our_close_is_dropped_at_the_close_deadline() {
    let (t0, mut out, mut peer) = (Instant::now(), Vec::new(), Peer::client());
    let mut conn = open_server(t0);
    conn.close(CloseCode(4000), "bye", t0 + secs(1), &config(), &mut out);
    assert_eq!(peer.read(&mut out), [Frame::Close(Some(4000), "bye".into())]);
    assert!(!conn.send(OpCode::Text, 0, b"late", &mut out) && out.is_empty(), "nothing after our close");
    // Data the peer sent before reading our close is not delivered.
    assert!(feed(&mut conn, peer.frame(OpCode::Text, b"crossed"), t0 + secs(2), &mut out).is_empty());
    assert!(!conn.has_ended());
    assert_eq!((conn.timer(), conn.poll_timeout()), (Some(Timer::Close), Some(t0 + secs(4))));
    let ended = conn.handle_timeout(t0 + secs(4), &config(), &mut out);
    assert!(conn.is_finished());
    assert!(matches!(ended, Some(CloseReason::CloseTimeout)));
}

#[test]
fn the_peers_answer_to_our_close_is_reported_with_its_code_and_reason() {
    let (t0, mut out, mut peer) = (Instant::now(), Vec::new(), Peer::client());
    let mut conn = open_server(t0);
    conn.close(CloseCode(4000), "bye", t0, &config(), &mut out);
    peer.read(&mut out);
    let got = feed(&mut conn, peer.close(4000, "ok"), t0 + secs(1), &mut out);
    assert!(out.is_empty() && conn.is_closed());
    assert!(
        matches!(&got[..], [Got::Ended(CloseReason::Peer { code: Some(CloseCode(4000)), reason })] if reason == "ok"),
        "{got:?}"
    );
    // The close deadline still bounds the wait for the transport to end.
    assert_eq!(conn.poll_timeout(), Some(t0 + secs(3)));
}

#[test]
fn a_peer_close_is_echoed_once_and_reported_once() {
    let (t0, mut out, mut peer) = (Instant::now(), Vec::new(), Peer::client());
    let mut conn = open_server(t0);
    let got = feed(&mut conn, peer.close(1000, "done"), t0, &mut out);
    assert_eq!(peer.read(&mut out), [Frame::Close(Some(1000), String::new())]);
    assert!(conn.is_closed() && !conn.can_read());
    assert!(matches!(&got[..], [Got::Ended(CloseReason::Peer { code: Some(CloseCode::NORMAL), .. })]), "{got:?}");
    conn.close(CloseCode::NORMAL, "", t0, &config(), &mut out);
    assert!(out.is_empty(), "one close frame at most");
    assert!(conn.handle_eof().is_none(), "reported once");
    // An empty close is answered with an empty one and reported as 1005.
    let (mut conn, mut peer) = (open_server(t0), Peer::client());
    let got = feed(&mut conn, peer.frame(OpCode::Close, b""), t0, &mut out);
    assert_eq!(peer.read(&mut out), [Frame::Close(None, String::new())]);
    assert!(matches!(&got[..], [Got::Ended(reason)] if reason.code() == CloseCode::NO_STATUS), "{got:?}");
}

#[test]
fn protocol_errors_close_with_the_code_of_the_broken_rule() {
    let t0 = Instant::now();
    let client = Peer::client();
    let mut unmasked = Vec::new();
    encode_frame(&mut unmasked, OpCode::Text, true, None, b"bare");
    let cases = [
        (unmasked, ProtocolError::UnmaskedFrame, 1002),
        (client.frame(OpCode::Reserved(3), b""), ProtocolError::ReservedOpcode(3), 1002),
        (client.frame(OpCode::Text, b"\xff"), ProtocolError::InvalidUtf8, 1007),
        (client.frame(OpCode::Binary, &[0; 1001]), ProtocolError::FrameTooLarge, 1009),
    ];
    for (input, rule, code) in cases {
        let (mut out, mut peer) = (Vec::new(), Peer::client());
        let mut conn = open_server(t0);
        let mut input = input;
        input.extend(client.frame(OpCode::Text, b"never delivered"));
        let got = feed(&mut conn, input, t0, &mut out);
        assert!(matches!(&got[..], [Got::Ended(CloseReason::Protocol(e))] if *e == rule), "{got:?}");
        assert_eq!(peer.read(&mut out), [Frame::Close(Some(code), rule.to_string())], "{rule:?}");
        assert!(conn.is_closed(), "{rule:?}");
        assert_eq!(conn.poll_timeout(), Some(t0 + secs(3)), "the transport gets the close timeout to end");
    }
}

#[test]
fn pings_are_answered_within_the_send_budget_and_not_once_closing() {
    let (t0, mut out, mut peer) = (Instant::now(), Vec::new(), Peer::client());
    let mut conn = open_server(t0);
    feed(&mut conn, peer.frame(OpCode::Ping, b"are you there"), t0, &mut out);
    assert_eq!(peer.read(&mut out), [Frame::Pong(b"are you there".to_vec())]);
    // A peer that does not read: its queue is at the budget, the pong is dropped.
    let mut full = [0x8a, 0x00].repeat(32);
    feed(&mut conn, peer.frame(OpCode::Ping, b"flood"), t0, &mut full);
    assert_eq!(full.len(), 64, "no pong past the budget");
    // Once our close is out, pings go unanswered.
    conn.close(CloseCode::NORMAL, "", t0, &config(), &mut out);
    peer.read(&mut out);
    feed(&mut conn, peer.frame(OpCode::Ping, b"late"), t0, &mut out);
    assert!(out.is_empty());
}

#[test]
fn the_end_of_the_transport_or_an_error_drops_the_connection() {
    let t0 = Instant::now();
    let mut conn = open_server(t0);
    let ended = conn.handle_eof();
    assert!(conn.is_finished() && matches!(ended, Some(CloseReason::NoCloseFrame)));
    let mut conn = open_server(t0);
    let error = std::sync::Arc::new(std::io::Error::from(std::io::ErrorKind::ConnectionReset));
    let ended = conn.handle_error(CloseReason::ReadFailed(error));
    assert!(conn.is_finished() && matches!(ended, Some(CloseReason::ReadFailed(_))));
    assert_eq!(conn.poll_timeout(), None);
}

#[test]
fn a_send_over_budget_fails_the_connection_with_1008() {
    let (t0, mut out, mut peer) = (Instant::now(), Vec::new(), Peer::client());
    let mut conn = open_server(t0);
    let ended = conn.fail(CloseReason::SendBufferFull, t0, &config(), &mut out);
    assert_eq!(peer.read(&mut out), [Frame::Close(Some(1008), "send buffer full".into())]);
    assert!(conn.is_closed() && matches!(ended, Some(CloseReason::SendBufferFull)));
}

/// Moves everything `from` wrote into `to`, as one transport read.
fn deliver(from: &mut Vec<u8>, to: &mut Connection, now: Instant, out: &mut impl Output) -> Vec<Got> {
    feed(to, std::mem::take(from), now, out)
}

#[test]
fn a_client_and_a_server_machine_talk_and_close_through_memory() {
    let t0 = Instant::now();
    let mut server = open_server(t0);
    let mut client = Connection::client(t0, &config());
    client.open(t0, &config());
    let (mut to_server, mut to_client, mut masks) = (Vec::new(), Vec::new(), MaskRng::from_seed(7));
    // The server fails unmasked frames with 1002: the echo proves the client masks.
    assert!(client.send(OpCode::Text, 0, b"hello", &mut Masked { bytes: &mut to_server, masks: &mut masks }));
    assert!(client.send(OpCode::Ping, 0, b"p", &mut Masked { bytes: &mut to_server, masks: &mut masks }));
    assert_eq!(deliver(&mut to_server, &mut server, t0, &mut to_client), [Got::Text("hello".into())]);
    assert!(server.send(OpCode::Text, 0, b"world", &mut to_client));
    assert_eq!(
        deliver(&mut to_client, &mut client, t0, &mut Masked { bytes: &mut to_server, masks: &mut masks }),
        [Got::Pong(b"p".to_vec()), Got::Text("world".into())]
    );
    server.close(CloseCode(4001), "kick", t0, &config(), &mut to_client);
    let client_got = deliver(&mut to_client, &mut client, t0, &mut Masked { bytes: &mut to_server, masks: &mut masks });
    let server_got = deliver(&mut to_server, &mut server, t0, &mut to_client);
    assert!(client.is_closed() && server.is_closed() && to_client.is_empty());
    assert!(
        matches!(&client_got[..], [Got::Ended(CloseReason::Peer { code: Some(CloseCode(4001)), reason })] if reason == "kick"),
        "{client_got:?}"
    );
    assert!(
        matches!(&server_got[..], [Got::Ended(CloseReason::Peer { code: Some(CloseCode(4001)), .. })]),
        "{server_got:?}"
    );
}

#[test]
fn the_client_end_masks_its_frames_and_fails_masked_ones() {
    let (t0, mut out, mut server) = (Instant::now(), Vec::new(), Peer::server());
    let mut masks = MaskRng::from_seed(1);
    let mut conn = Connection::client(t0, &config());
    conn.open(t0, &config());
    assert!(conn.send(OpCode::Text, 0, b"masked", &mut Masked { bytes: &mut out, masks: &mut masks }));
    // The scripted server's decoder refuses unmasked frames.
    assert_eq!(server.read(&mut out), [Frame::Text("masked".into())]);
    let masked = Peer::client().frame(OpCode::Text, b"from a server?");
    let got = feed(&mut conn, masked, t0, &mut Masked { bytes: &mut out, masks: &mut masks });
    assert!(matches!(&got[..], [Got::Ended(CloseReason::Protocol(ProtocolError::MaskedFrame))]), "{got:?}");
    let rule = ProtocolError::MaskedFrame;
    assert_eq!(server.read(&mut out), [Frame::Close(Some(1002), rule.to_string())]);
}

#[test]
fn the_application_answers_and_closes_while_it_holds_a_message() {
    // As the server's handler does: the message borrows the decoder, the
    // control beside it sends and closes.
    let (t0, mut out, mut peer) = (Instant::now(), Vec::new(), Peer::client());
    let mut conn = open_server(t0);
    let mut input = peer.frame(OpCode::Text, b"bye");
    let (_, polled) = conn.poll_input(&mut input, t0, &config(), &mut out);
    let Some(Input::Ready(ready)) = polled else { panic!("{polled:?}") };
    let (received, control) = conn.received(&input, ready, t0, &config(), &mut out).expect("a valid frame");
    let Received::Message(Message::Text(text)) = received else { panic!("{received:?}") };
    assert!(control.send(OpCode::Text, 0, text.as_bytes(), &mut out));
    control.close(CloseCode::NORMAL, text, t0, &config(), &mut out);
    assert!(!control.is_open());
    assert_eq!(peer.read(&mut out), [Frame::Text("bye".into()), Frame::Close(Some(1000), "bye".into())]);
    assert_eq!((conn.timer(), conn.poll_timeout()), (Some(Timer::Close), Some(t0 + secs(3))));
}

#[test]
fn the_machine_is_small_with_the_drivers_ticks() {
    // The server keeps one per connection in a slot of at most 128 bytes
    // (runtime/worker.rs): with `u32` ticks, the decoder plus 8 bytes.
    #[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
    struct Tick(u32);
    impl Time for Tick {
        fn after(self, duration: Duration) -> Tick {
            Tick(self.0.saturating_add(duration.as_millis() as u32))
        }
    }
    let size = std::mem::size_of::<Connection<Tick>>();
    assert!(size <= std::mem::size_of::<Decoder>() + 8, "{size}");
}
