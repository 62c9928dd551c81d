//! permessage-deflate on connections the runtime dials out
//! (`ServerHandle::connect` with `ClientBuilder::deflate`), over real
//! loopback sockets: against our own server (messages both ways, counted on
//! the wire through a relay), against scripted servers (compressed and
//! masked frames as the server sees them, an answer we did not offer, a
//! decompression bomb), a broadcast that reaches a dialed connection, and the
//! event client talking to an `App` with compression on.
#![cfg(feature = "app")]

mod common;

use std::io::{Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{mpsc, Arc, Mutex};
use std::thread::{self, JoinHandle};

use common::*;
use emitws::client::app::{AppClient, AppError, AppOptions};
use emitws::client::{ClientBuilder, ClientError};
use emitws::proto::deflate::{Compressor, Decompressor, DeflateAgreement, DeflateConfig, DeflateResponseError};
use emitws::proto::handshake::client::ResponseError;
use emitws::proto::{encode_frame_with_rsv, CloseCode, CloseReason, Decoder, Event, Limits, Message, OpCode, Role};
use emitws::runtime::{Conn, ConnId, Handler, RunningServer, SharedFrame};
use serde_json::{json, Value};

/// What the dialing side's handler saw.
#[derive(Clone, Debug, PartialEq, Eq)]
enum Seen {
    /// `on_open`: the connection and the agreement, as its header value.
    Open(ConnId, Option<String>),
    Text(String),
    Binary(Vec<u8>),
    Close(u16),
    Failed(String),
}

/// Sends `messages` on open (text, or binary for those not UTF-8), and
/// reports everything to the test.
#[derive(Clone)]
struct Dialer {
    messages: Arc<Vec<Vec<u8>>>,
    seen: Arc<Mutex<mpsc::Sender<Seen>>>,
}

impl Dialer {
    fn new(messages: Vec<Vec<u8>>) -> (Dialer, mpsc::Receiver<Seen>) {
        let (sender, seen) = mpsc::channel();
        (Dialer { messages: Arc::new(messages), seen: Arc::new(Mutex::new(sender)) }, seen)
    }

    fn report(&self, seen: Seen) {
        let _ = self.seen.lock().unwrap().send(seen);
    }
}

impl Handler for Dialer {
    type Data = ();

    fn on_open(&mut self, conn: &mut Conn<'_, ()>) {
        self.report(Seen::Open(conn.id(), conn.deflate().map(|agreement| agreement.to_string())));
        for message in self.messages.iter() {
            let _ = match std::str::from_utf8(message) {
                Ok(text) => conn.send_text(text),
                Err(_) => conn.send_binary(message),
            };
        }
    }

    fn on_message(&mut self, _: &mut Conn<'_, ()>, message: Message<'_>) {
        self.report(match message {
            Message::Text(text) => Seen::Text(text.to_string()),
            Message::Binary(bytes) => Seen::Binary(bytes.to_vec()),
        });
    }

    fn on_close(&mut self, _: &mut Conn<'_, ()>, reason: &CloseReason) {
        self.report(Seen::Close(reason.code().0));
    }

    fn on_connect_error(&mut self, _: (), error: ClientError) {
        self.report(Seen::Failed(match error {
            ClientError::Handshake(e) => format!("handshake: {e:?}"),
            other => other.to_string(),
        }));
    }
}

fn next(seen: &mpsc::Receiver<Seen>) -> Seen {
    seen.recv_timeout(WAIT).expect("the dialing handler reports within the wait")
}

fn dial(hub: &RunningServer, addr: SocketAddr, deflate: Option<DeflateConfig>) {
    let settings = ClientBuilder::new().timeout(WAIT).deflate(deflate);
    hub.handle().connect(&format!("ws://{addr}/"), &settings, ()).unwrap();
}

/// Compressible messages of several sizes, text and binary; the shortest
/// are under `min_size`, so they go plain.
fn messages() -> Vec<Vec<u8>> {
    let json = |n: usize| r#"{"event":"quote","data":{"symbol":"ABC","bid":101.25}}"#.repeat(n).into_bytes();
    let mut binary: Vec<u8> = (0..50_000u32).map(|i| (i % 251) as u8).collect();
    binary.push(0xff); // not UTF-8: sent as binary
    vec![b"short".to_vec(), json(4), json(100), json(2_000), binary, json(4)]
}

/// A TCP relay to `upstream` for one connection, counting bytes each way.
struct Relay {
    addr: SocketAddr,
    /// Bytes from the dialing side to the server, and back.
    sent: Arc<AtomicUsize>,
    received: Arc<AtomicUsize>,
    thread: JoinHandle<()>,
}

impl Relay {
    fn start(upstream: SocketAddr) -> Relay {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let (sent, received) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
        let counters = (sent.clone(), received.clone());
        let thread = thread::spawn(move || {
            let (client, _) = listener.accept().unwrap();
            let server = connect(upstream);
            client.set_read_timeout(Some(WAIT)).unwrap();
            let up = pipe(client.try_clone().unwrap(), server.try_clone().unwrap(), counters.0);
            pipe(server, client, counters.1).join().unwrap();
            up.join().unwrap();
        });
        Relay { addr, sent, received, thread }
    }

    /// Waits for both connections to end; returns the bytes sent and received.
    fn finish(self) -> (usize, usize) {
        self.thread.join().unwrap();
        (self.sent.load(Ordering::Relaxed), self.received.load(Ordering::Relaxed))
    }
}

/// Copies `from` to `to` until `from` ends (or stays silent for the wait).
fn pipe(mut from: TcpStream, mut to: TcpStream, count: Arc<AtomicUsize>) -> JoinHandle<()> {
    thread::spawn(move || {
        let mut buf = [0; 16 << 10];
        while let Ok(n) = from.read(&mut buf) {
            if n == 0 || to.write_all(&buf[..n]).is_err() {
                break;
            }
            count.fetch_add(n, Ordering::Relaxed);
        }
        let _ = to.shutdown(Shutdown::Write);
    })
}

/// Dials our own server (deflate on) through a relay with `config`, sends
/// [`messages`] and checks the echoes; returns the agreement and the bytes
/// on the wire each way.
fn echo_through_relay(config: DeflateConfig) -> (Option<String>, usize, usize) {
    let upstream = quick_server().deflate(Some(DeflateConfig::default())).start("127.0.0.1:0", Echo::default());
    let upstream = upstream.unwrap();
    let relay = Relay::start(upstream.local_addr());
    let (dialer, seen) = Dialer::new(messages());
    let hub = quick_server().start_dialer(dialer).unwrap();
    dial(&hub, relay.addr, Some(config));
    let Seen::Open(_, agreement) = next(&seen) else { panic!("the connection opens") };
    for message in messages() {
        let expected = match String::from_utf8(message) {
            Ok(text) => Seen::Text(text),
            Err(binary) => Seen::Binary(binary.into_bytes()),
        };
        assert!(next(&seen) == expected, "an echo differs from what was sent");
    }
    hub.shutdown();
    upstream.shutdown();
    let (sent, received) = relay.finish();
    (agreement, sent, received)
}

fn payload_bytes() -> usize {
    messages().iter().map(Vec::len).sum()
}

#[test]
fn a_dialed_connection_compresses_both_ways_with_context_takeover() {
    let (agreement, sent, received) = echo_through_relay(DeflateConfig::default());
    assert_eq!(agreement.as_deref(), Some("permessage-deflate"));
    // Compressed, the messages take a small part of their size on the wire.
    let total = payload_bytes();
    assert!(sent < total / 10 && received < total / 10, "{sent} and {received} bytes on the wire for {total}");
}

#[test]
fn a_dialed_connection_compresses_both_ways_without_context_takeover() {
    let config = DeflateConfig { context_takeover: false, peer_context_takeover: false, ..DeflateConfig::default() };
    let (agreement, sent, received) = echo_through_relay(config);
    assert_eq!(
        agreement.as_deref(),
        Some("permessage-deflate; server_no_context_takeover; client_no_context_takeover")
    );
    let total = payload_bytes();
    assert!(sent < total / 4 && received < total / 4, "{sent} and {received} bytes on the wire for {total}");
    // Small windows too: the server answers the sizes we asked for.
    let (agreement, ..) = echo_through_relay(DeflateConfig::low_memory());
    assert_eq!(
        agreement.as_deref(),
        Some(
            "permessage-deflate; server_no_context_takeover; client_no_context_takeover; \
             server_max_window_bits=9; client_max_window_bits=9"
        )
    );
}

#[test]
fn without_an_offer_or_an_answer_the_connection_runs_plain() {
    let plain = quick_server().start("127.0.0.1:0", Echo::default()).unwrap();
    let compressing = quick_server().deflate(Some(DeflateConfig::default())).start("127.0.0.1:0", Echo::default());
    let compressing = compressing.unwrap();
    let (dialer, seen) = Dialer::new(vec![messages()[2].clone()]);
    let hub = quick_server().start_dialer(dialer).unwrap();
    for (server, deflate) in [(&plain, Some(DeflateConfig::default())), (&compressing, None)] {
        dial(&hub, server.local_addr(), deflate);
        assert!(matches!(next(&seen), Seen::Open(_, None)));
        assert_eq!(next(&seen), Seen::Text(String::from_utf8(messages()[2].clone()).unwrap()));
    }
    hub.shutdown();
    plain.shutdown();
    compressing.shutdown();
}

/// Reads the dialing side's data messages until its close frame (a server's
/// decoder: every frame must be masked), inflating compressed ones; returns
/// them with whether each came compressed, and the close code.
fn messages_from(socket: &mut TcpStream, agreement: &DeflateAgreement) -> (Vec<(Vec<u8>, bool)>, Option<u16>) {
    let mut decoder = Decoder::new(Role::Server);
    decoder.allow_extension_rsv(0b100);
    let mut inflater = Decompressor::new(agreement, Role::Server);
    let mut got = Vec::new();
    let mut pending = Vec::new();
    let mut buf = [0; 16 << 10];
    loop {
        let Some(n) = socket.read(&mut buf).ok().filter(|&n| n > 0) else { return (got, None) };
        pending.extend_from_slice(&buf[..n]);
        while !pending.is_empty() {
            let decoded = decoder.decode(&mut pending, &Limits::default()).expect("valid, masked client frames");
            let consumed = decoded.consumed;
            match decoded.event {
                Some(Event::Compressed { payload, .. }) => {
                    let mut message = Vec::new();
                    inflater.decompress(payload, &mut message, 1 << 24).expect("the client's data inflates");
                    got.push((message, true));
                }
                Some(Event::Message(message)) => got.push((message.as_bytes().to_vec(), false)),
                Some(Event::Close(code, _)) => return (got, code.map(|c| c.0)),
                _ => {}
            }
            pending.drain(..consumed);
        }
    }
}

#[test]
fn the_server_sees_compressed_masked_frames_and_a_bomb_closes_with_1009() {
    // 8 MiB of zeros in a few KiB, against the dialed connection's 1 MiB limit.
    let mut bomb = Vec::new();
    let mut compressor = Compressor::new(&DeflateAgreement::default(), Role::Server, &DeflateConfig::default());
    let mut hello = Vec::new();
    compressor.compress(&messages()[2], &mut hello);
    compressor.compress(&vec![0; 8 << 20], &mut bomb);
    assert!(bomb.len() < 16 << 10, "8 MiB of zeros compress to {} bytes", bomb.len());
    let (addr, server) = scripted(move |mut socket, key| {
        let mut bytes = switching(&key, "Sec-WebSocket-Extensions: permessage-deflate\r\n").into_bytes();
        encode_frame_with_rsv(&mut bytes, OpCode::Text, true, 0b100, None, &hello);
        encode_frame_with_rsv(&mut bytes, OpCode::Binary, true, 0b100, None, &bomb);
        socket.write_all(&bytes).unwrap();
        messages_from(&mut socket, &DeflateAgreement::default())
    });
    let sent = messages();
    let (dialer, seen) = Dialer::new(sent.clone());
    let hub = quick_server().start_dialer(dialer).unwrap();
    let settings = ClientBuilder::new().timeout(WAIT).deflate(Some(DeflateConfig::default())).max_message_size(1 << 20);
    hub.handle().connect(&format!("ws://{addr}/"), &settings, ()).unwrap();
    assert!(matches!(next(&seen), Seen::Open(_, Some(_))));
    assert_eq!(next(&seen), Seen::Text(String::from_utf8(messages()[2].clone()).unwrap()), "inflated");
    assert_eq!(next(&seen), Seen::Close(1009));
    let (got, code) = server.join().unwrap();
    assert_eq!(code, Some(1009));
    let expected: Vec<(Vec<u8>, bool)> = sent.into_iter().map(|m| (m.clone(), m.len() >= 128)).collect();
    assert!(got == expected, "every message arrives, compressed from min_size on");
    hub.shutdown();
}

#[test]
fn an_answer_we_did_not_offer_is_refused() {
    let strict = DeflateConfig { peer_context_takeover: false, ..DeflateConfig::default() };
    let cases = [
        (None, "permessage-deflate", ResponseError::UnofferedExtension),
        (
            Some(DeflateConfig::default()),
            "permessage-deflate; x=1",
            ResponseError::Deflate(DeflateResponseError::BadParameter),
        ),
        (Some(strict), "permessage-deflate", ResponseError::Deflate(DeflateResponseError::IgnoredRequest)),
        (
            Some(DeflateConfig::default()),
            "permessage-deflate; client_max_window_bits=8",
            ResponseError::Deflate(DeflateResponseError::BadWindow),
        ),
    ];
    let (dialer, seen) = Dialer::new(Vec::new());
    let hub = quick_server().start_dialer(dialer).unwrap();
    for (offer, answer, error) in cases {
        let (addr, server) = scripted(move |mut socket, key| {
            let extension = format!("Sec-WebSocket-Extensions: {answer}\r\n");
            socket.write_all(switching(&key, &extension).as_bytes()).unwrap();
            let mut rest = Vec::new();
            let _ = socket.read_to_end(&mut rest); // until the client hangs up
        });
        dial(&hub, addr, offer);
        assert_eq!(next(&seen), Seen::Failed(format!("handshake: {error:?}")), "{answer}");
        server.join().unwrap();
    }
    wait_connection_count(&hub.handle(), 0);
    hub.shutdown();
}

/// Records opens and messages, and broadcasts `!broadcast <text>` to every
/// connection it knows, accepted or dialed.
#[derive(Clone, Default)]
struct Hub {
    ids: Arc<Mutex<Vec<ConnId>>>,
    echoes: Arc<Mutex<Vec<String>>>,
}

impl Handler for Hub {
    type Data = ();

    fn on_open(&mut self, conn: &mut Conn<'_, ()>) {
        self.ids.lock().unwrap().push(conn.id());
    }

    fn on_message(&mut self, conn: &mut Conn<'_, ()>, message: Message<'_>) {
        let Message::Text(text) = message else { return };
        match text.strip_prefix("!broadcast ") {
            Some(text) => conn.server().broadcast(self.ids.lock().unwrap().clone(), &SharedFrame::text(text)),
            None => self.echoes.lock().unwrap().push(text.to_string()),
        }
    }
}

#[test]
fn a_broadcast_to_a_dialed_connection_is_compressed_and_masked_for_it() {
    let upstream = quick_server().deflate(Some(DeflateConfig::default())).start("127.0.0.1:0", Echo::default());
    let upstream = upstream.unwrap();
    // The hub's accepted connections take a frame compressed once for all.
    let low = DeflateConfig::low_memory();
    let hub_handler = Hub::default();
    let hub = quick_server().deflate(Some(low)).start("127.0.0.1:0", hub_handler.clone()).unwrap();
    // Dialed connections, one that would take a frame compressed alone and one plain.
    for deflate in [Some(low), None] {
        let settings = ClientBuilder::new().timeout(WAIT).deflate(deflate);
        hub.handle().connect(&format!("ws://{}/", upstream.local_addr()), &settings, ()).unwrap();
    }
    let settings = ClientBuilder::new().timeout(WAIT).deflate(Some(DeflateConfig::default()));
    let mut local = settings.connect(&format!("ws://{}/", hub.local_addr())).unwrap();
    assert!(local.deflate().is_some());
    let deadline = std::time::Instant::now() + WAIT;
    while hub_handler.ids.lock().unwrap().len() < 3 {
        assert!(std::time::Instant::now() < deadline, "both connections open");
        thread::sleep(ms(5));
    }
    let news = "news for everyone, ".repeat(20);
    local.send_text(&format!("!broadcast {news}")).unwrap();
    assert_eq!(local.recv().unwrap(), Message::Text(news.as_str()));
    // Upstream fails an unmasked frame with 1002; it echoes these.
    while hub_handler.echoes.lock().unwrap().len() < 2 {
        assert!(std::time::Instant::now() < deadline, "the dialed connections' echoes");
        thread::sleep(ms(5));
    }
    assert_eq!(*hub_handler.echoes.lock().unwrap(), [news.clone(), news]);
    local.close(CloseCode::NORMAL, "").unwrap();
    hub.shutdown();
    upstream.shutdown();
}

/// An `App` with compression on that answers `/echo` with the request's data.
fn echo_app() -> emitws::app::Running {
    let mut app = emitws::app::App::new();
    app.on("/echo", |req| {
        let data: Value = req.data().unwrap_or(Value::Null);
        req.reply(&data);
    });
    app.listen_with(quick_server().deflate(Some(DeflateConfig::default())), "127.0.0.1:0").unwrap()
}

/// An event client of `addr` that does not reconnect.
fn app_client(addr: SocketAddr, client: ClientBuilder) -> AppClient {
    let options = AppOptions::default().reconnect(false).connect_timeout(WAIT).client(client);
    AppClient::connect(&format!("ws://{addr}/"), options).unwrap()
}

#[test]
fn the_event_client_compresses_with_an_app() {
    let running = echo_app();
    let relay = Relay::start(running.local_addr());
    let client = app_client(relay.addr, ClientBuilder::new().deflate(Some(DeflateConfig::default())));
    // Under the App's 64 KiB envelope limit.
    let quotes: Vec<Value> = (0..1_000).map(|i| json!({"symbol": "ABC", "bid": 101.25, "seq": i % 7})).collect();
    let total = serde_json::to_string(&quotes).unwrap().len() * 3;
    for _ in 0..3 {
        let reply = client.request("/echo", json!(quotes), WAIT);
        assert!(reply == Ok(json!(quotes)), "the echo differs: {:?}", reply.map(|v| v.to_string().len()));
    }
    client.close();
    running.close();
    let (sent, received) = relay.finish();
    assert!(sent < total / 10 && received < total / 10, "{sent} and {received} bytes on the wire for {total}");
}

#[test]
fn the_event_client_inflates_under_its_message_limit() {
    let running = echo_app();
    let settings = ClientBuilder::new().deflate(Some(DeflateConfig::default())).max_message_size(4_000);
    let client = app_client(running.local_addr(), settings);
    let (closed, why) = mpsc::channel();
    client.on("@disconnect", move |_, why| {
        let _ = closed.send(why.clone());
    });
    assert_eq!(client.request("/echo", json!("small"), WAIT), Ok(json!("small")));
    // Our request goes out compressed; the reply inflates past 4,000 bytes.
    let big = "x".repeat(10_000);
    assert!(matches!(client.request("/echo", json!(big), WAIT), Err(AppError::Disconnected(_))));
    assert_eq!(why.recv_timeout(WAIT).unwrap()["code"], 1009);
    client.close();
    running.close();
}
