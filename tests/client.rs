//! The blocking client over real loopback sockets: against our own server
//! (echo, ping, both close directions, subprotocols, permessage-deflate both
//! ways, wss://) and against scripted raw-TCP servers that answer badly
//! (wrong accept key, unoffered subprotocol or extension, masked frames, a
//! refusal with a body, silence, a decompression bomb).

mod common;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener};
use std::time::{Duration, Instant};

use common::*;
use emitws::client::{ClientBuilder, ClientError, Incoming, UrlError};
use emitws::proto::deflate::{Compressor, DeflateAgreement, DeflateConfig};
use emitws::proto::handshake::client::ResponseError;
use emitws::proto::{
    encode_frame, encode_frame_with_rsv, CloseCode, CloseReason, Message, OpCode, ProtocolError, Role,
};
use emitws::runtime::{Accept, Conn, Handler, Reject, UpgradeRequest};

fn quick() -> ClientBuilder {
    ClientBuilder::new().timeout(WAIT).close_timeout(ms(500))
}

fn url(addr: SocketAddr, path: &str) -> String {
    format!("ws://{addr}{path}")
}

#[test]
fn debug_output_keeps_header_values_out() {
    let builder = ClientBuilder::new().header("Authorization", "Bearer s3cret").protocol("chat.v1");
    let shown = format!("{builder:?}");
    assert!(shown.contains("Authorization") && shown.contains("chat.v1"), "{shown}");
    assert!(!shown.contains("s3cret"), "{shown}");
}

#[test]
fn echoes_text_binary_and_large_messages_then_closes_cleanly() {
    let echo = Echo::default();
    let server = quick_server().start("127.0.0.1:0", echo.clone()).unwrap();
    let mut client = quick().connect(&url(server.local_addr(), "/echo?x=1")).unwrap();
    client.send_text("héllo").unwrap();
    assert_eq!(client.recv().unwrap(), Message::Text("héllo"));
    client.send_binary(&[0, 1, 2]).unwrap();
    assert_eq!(client.recv().unwrap(), Message::Binary(&[0, 1, 2]));
    // Larger than one read: assembled across reads.
    let big: Vec<u8> = (0..300_000u32).map(|i| (i % 251) as u8).collect();
    client.send_binary(&big).unwrap();
    assert!(client.recv().unwrap() == Message::Binary(&big), "the 300 KB echo differs");
    client.ping(b"are you there").unwrap();
    assert_eq!(client.recv_event().unwrap(), Incoming::Pong(b"are you there"));
    client.close(CloseCode::NORMAL, "done").unwrap();
    assert!(matches!(client.send_text("late"), Err(ClientError::Closed(_))));
    let id = echo.events.wait_opened("/echo");
    let reason = echo.events.wait_closed(id);
    assert!(matches!(&reason, CloseReason::Peer { code: Some(CloseCode::NORMAL), reason } if reason == "done"));
    server.shutdown();
}

#[test]
fn a_close_from_the_server_is_answered_and_reported() {
    let echo = Echo::default();
    let server = quick_server().start("127.0.0.1:0", echo.clone()).unwrap();
    let mut client = quick().connect(&url(server.local_addr(), "/")).unwrap();
    client.send_text("!close 4000").unwrap();
    match client.recv() {
        Err(ClientError::Closed(CloseReason::Peer { code, reason })) => {
            assert_eq!((code, reason.as_str()), (Some(CloseCode(4000)), "bye"))
        }
        other => panic!("expected the server's close, got {other:?}"),
    }
    let id = echo.events.wait_opened("/");
    let reason = echo.events.wait_closed(id);
    assert!(
        matches!(reason, CloseReason::Peer { code: Some(CloseCode(4000)), .. }),
        "the server saw our echo: {reason:?}"
    );
    assert!(matches!(client.recv(), Err(ClientError::Closed(_))), "closed stays closed");
    assert!(client.close(CloseCode::NORMAL, "").is_ok());
    server.shutdown();
}

/// Chooses `chat.v1` if offered, refuses `/private` with 403 and a body.
#[derive(Clone)]
struct Picky;

impl Handler for Picky {
    type Data = ();
    fn on_upgrade(&mut self, request: &UpgradeRequest<'_>) -> Result<Accept<()>, Reject> {
        if request.path() == "/private" {
            return Err(Reject { status: 403, body: "members only".into() });
        }
        assert_eq!(request.header("x-token"), Some(&b"abc"[..]));
        assert_eq!(request.header("origin"), Some(&b"https://example.com"[..]));
        let accept = Accept::new(());
        Ok(if request.protocols().any(|p| p == "chat.v1") { accept.protocol("chat.v1") } else { accept })
    }
    fn on_message(&mut self, conn: &mut Conn<'_, ()>, message: Message<'_>) {
        if let Message::Text(text) = message {
            let _ = conn.send_text(text);
        }
    }
}

#[test]
fn subprotocols_headers_origin_and_refusals() {
    let server = quick_server().start("127.0.0.1:0", Picky).unwrap();
    let builder =
        quick().protocol("chat.v2").protocol("chat.v1").header("X-Token", "abc").origin("https://example.com");
    let client = builder.connect(&url(server.local_addr(), "/")).unwrap();
    assert_eq!(client.protocol(), Some("chat.v1"));
    match builder.connect(&url(server.local_addr(), "/private")) {
        Err(ClientError::Status { status, body }) => assert_eq!((status, &body[..]), (403, &b"members only"[..])),
        other => panic!("expected a 403, got {other:?}"),
    }
    server.shutdown();
}

#[test]
fn deflate_both_ways_with_our_server() {
    let echo = Echo::default();
    let server = quick_server().deflate(Some(DeflateConfig::default())).start("127.0.0.1:0", echo).unwrap();
    let mut client = quick().deflate(Some(DeflateConfig::default())).connect(&url(server.local_addr(), "/")).unwrap();
    assert!(client.deflate().is_some(), "permessage-deflate agreed");
    let json = r#"{"event":"chat","data":{"room":"lobby","text":"hello there"}}"#.repeat(200);
    for _ in 0..3 {
        client.send_text(&json).unwrap();
        assert_eq!(client.recv().unwrap(), Message::Text(&json));
    }
    client.send_text("short, sent plain").unwrap();
    assert_eq!(client.recv().unwrap(), Message::Text("short, sent plain"));
    client.close(CloseCode::NORMAL, "").unwrap();
    // A server without compression declines, and the client runs plain.
    let plain = quick_server().start("127.0.0.1:0", Echo::default()).unwrap();
    let mut client = quick().deflate(Some(DeflateConfig::default())).connect(&url(plain.local_addr(), "/")).unwrap();
    assert!(client.deflate().is_none());
    client.send_text(&json).unwrap();
    assert_eq!(client.recv().unwrap(), Message::Text(&json));
    server.shutdown();
    plain.shutdown();
}

#[cfg(feature = "tls")]
#[test]
fn wss_with_a_self_signed_certificate() {
    use emitws::tls::{TlsAcceptor, TlsConnector};
    let (cert_pem, key_pem) = identity();
    let acceptor = TlsAcceptor::from_pem(cert_pem.as_bytes(), key_pem.as_bytes()).unwrap();
    let server = quick_server().tls(acceptor).start("127.0.0.1:0", Echo::default()).unwrap();
    let wss = format!("wss://localhost:{}/secure", server.local_addr().port());
    let trusted = quick().tls(TlsConnector::with_root_pem(cert_pem.as_bytes()).unwrap());
    let mut client = trusted.connect(&wss).unwrap();
    let big = "x".repeat(100_000);
    client.send_text(&big).unwrap();
    assert_eq!(client.recv().unwrap(), Message::Text(&big));
    client.close(CloseCode::NORMAL, "").unwrap();
    // The default roots (Mozilla's) do not trust a self-signed certificate.
    match quick().connect(&wss) {
        Err(ClientError::Tls(e)) => {
            assert!(e.to_string().contains("certificate"), "{e}");
            assert!(std::error::Error::source(&e).is_some(), "the handshake's error is kept: {e:?}");
        }
        other => panic!("expected a TLS error, got {other:?}"),
    }
    server.shutdown();
}

fn handshake_error(answer: &'static str, builder: ClientBuilder) -> ClientError {
    let (addr, server) = scripted(move |mut socket, key| {
        socket.write_all(switching(&key, answer).as_bytes()).unwrap();
        let mut rest = Vec::new();
        let _ = socket.read_to_end(&mut rest); // until the client gives up
    });
    let error = builder.connect(&url(addr, "/")).expect_err("the handshake must fail");
    server.join().unwrap();
    error
}

#[test]
fn bad_101_answers_are_refused_with_their_reason() {
    let (addr, server) = scripted(|mut socket, _| {
        let wrong = switching("dGhlIHNhbXBsZSBub25jZQ==", "");
        socket.write_all(wrong.as_bytes()).unwrap();
    });
    assert!(matches!(quick().connect(&url(addr, "/")), Err(ClientError::Handshake(ResponseError::BadAccept))));
    server.join().unwrap();
    let unoffered = handshake_error("Sec-WebSocket-Protocol: chat.v9\r\n", quick().protocol("chat.v1"));
    assert!(matches!(unoffered, ClientError::Handshake(ResponseError::UnofferedProtocol)), "{unoffered}");
    let extension = handshake_error("Sec-WebSocket-Extensions: permessage-deflate\r\n", quick());
    assert!(matches!(extension, ClientError::Handshake(ResponseError::UnofferedExtension)), "{extension}");
}

#[test]
fn a_first_frame_in_the_same_packet_as_the_101_is_not_lost() {
    let (addr, server) = scripted(|mut socket, key| {
        let mut bytes = switching(&key, "").into_bytes();
        encode_frame(&mut bytes, OpCode::Text, true, None, b"early");
        socket.write_all(&bytes).unwrap();
        close_code_from(&mut socket)
    });
    let mut client = quick().connect(&url(addr, "/")).unwrap();
    assert_eq!(client.recv().unwrap(), Message::Text("early"));
    drop(client);
    server.join().unwrap();
}

#[test]
fn a_masked_server_frame_fails_the_connection_with_1002() {
    let (addr, server) = scripted(|mut socket, key| {
        let mut bytes = switching(&key, "").into_bytes();
        encode_frame(&mut bytes, OpCode::Text, true, Some([1, 2, 3, 4]), b"masked");
        socket.write_all(&bytes).unwrap();
        close_code_from(&mut socket)
    });
    let mut client = quick().connect(&url(addr, "/")).unwrap();
    assert!(matches!(client.recv(), Err(ClientError::Protocol(ProtocolError::MaskedFrame))));
    assert_eq!(server.join().unwrap(), Some(1002));
}

#[test]
fn a_compressed_bomb_fails_with_1009() {
    // 8 MiB of zeros in a few KiB, against a 1 MiB limit.
    let mut bomb = Vec::new();
    let agreement = DeflateAgreement::default();
    Compressor::new(&agreement, Role::Server, &DeflateConfig::default()).compress(&vec![0; 8 << 20], &mut bomb);
    assert!(bomb.len() < 16 << 10, "8 MiB of zeros compress to {} bytes", bomb.len());
    let (addr, server) = scripted(move |mut socket, key| {
        let mut bytes = switching(&key, "Sec-WebSocket-Extensions: permessage-deflate\r\n").into_bytes();
        encode_frame_with_rsv(&mut bytes, OpCode::Binary, true, 0b100, None, &bomb);
        socket.write_all(&bytes).unwrap();
        close_code_from(&mut socket)
    });
    let builder = quick().deflate(Some(DeflateConfig::default())).max_message_size(1 << 20);
    let mut client = builder.connect(&url(addr, "/")).unwrap();
    assert!(matches!(client.recv(), Err(ClientError::Protocol(ProtocolError::MessageTooLarge))));
    assert_eq!(server.join().unwrap(), Some(1009));
}

#[test]
fn connection_failures_have_their_own_errors() {
    assert!(matches!(quick().connect("http://x"), Err(ClientError::Url(UrlError::Scheme(_)))));
    assert!(matches!(quick().connect("ws://[::1"), Err(ClientError::Url(UrlError::BadIpv6(_)))));
    // A port nobody listens on: bound, then closed.
    let port = TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let refused = quick().connect(&format!("ws://127.0.0.1:{port}/"));
    assert!(matches!(refused, Err(ClientError::Refused { .. })), "{refused:?}");
    let dns = quick().connect("ws://no-such-host.invalid/");
    assert!(matches!(dns, Err(ClientError::Dns { .. })), "{dns:?}");
    // A server that accepts and never answers: the handshake timeout.
    let (addr, server) = scripted(|mut socket, _| {
        let mut rest = Vec::new();
        let _ = socket.read_to_end(&mut rest);
    });
    let started = Instant::now();
    let silent = ClientBuilder::new().timeout(ms(300)).connect(&url(addr, "/"));
    assert!(matches!(silent, Err(ClientError::Timeout)), "{silent:?}");
    assert!(started.elapsed() < Duration::from_secs(2), "took {:?}", started.elapsed());
    server.join().unwrap();
}

mod left_out {
    include!("common/left_out.rs");
}

#[test]
fn ipv6_loopback() {
    // A machine without IPv6 loopback leaves this out only on purpose.
    let server = match quick_server().start("[::1]:0", Echo::default()) {
        Ok(server) => server,
        Err(_) if left_out::left_out("ipv6") => {
            return eprintln!("\n*** EMITWS_SKIP=ipv6: not running this test ***\n")
        }
        Err(e) => panic!("cannot listen on [::1] ({e}); leave IPv6 out on purpose with EMITWS_SKIP=ipv6"),
    };
    let mut client = quick().connect(&format!("ws://[::1]:{}/v6", server.local_addr().port())).unwrap();
    client.send_text("over v6").unwrap();
    assert_eq!(client.recv().unwrap(), Message::Text("over v6"));
    server.shutdown();
}

#[test]
fn a_server_that_never_answers_our_close_times_out() {
    let (addr, server) = scripted(|mut socket, key| {
        socket.write_all(switching(&key, "").as_bytes()).unwrap();
        // Reads our close frame and says nothing, until we hang up.
        let mut rest = Vec::new();
        let _ = socket.read_to_end(&mut rest);
        rest.len()
    });
    let mut client = quick().close_timeout(ms(200)).connect(&url(addr, "/")).unwrap();
    let started = Instant::now();
    assert!(matches!(client.close(CloseCode::NORMAL, ""), Err(ClientError::Timeout)));
    assert!(started.elapsed() < Duration::from_secs(2), "took {:?}", started.elapsed());
    assert!(server.join().unwrap() >= 6, "the server got our masked close frame");
    match client.send_text("late") {
        Err(ClientError::Closed(reason)) => assert!(matches!(reason, CloseReason::CloseTimeout), "{reason:?}"),
        other => panic!("expected the close timeout, got {other:?}"),
    }
}
