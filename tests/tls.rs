//! `wss://` on the server: the TLS handshake, the upgrade and frames through
//! TLS, large messages both ways, the close handshake, and a client that
//! does not trust the certificate.
#![cfg(feature = "tls")]

mod common;

use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpStream};

use common::*;
use emitws::proto::{encode_frame, CloseCode, CloseReason, Decoder, Event, Limits, OpCode, Role};
use emitws::runtime::{RunningServer, Server};
use emitws::tls::{TlsAcceptor, TlsConnector, TlsStream};

/// A self-signed identity for `localhost`: (certificate PEM, key PEM).
fn identity() -> (String, String) {
    let cert = rcgen::generate_simple_self_signed(vec!["localhost".into()]).unwrap();
    (cert.cert.pem(), cert.signing_key.serialize_pem())
}

fn tls_server(cert: &str, key: &str, configure: impl FnOnce(Server) -> Server) -> (RunningServer, Echo) {
    let acceptor = TlsAcceptor::from_pem(cert.as_bytes(), key.as_bytes()).unwrap();
    let echo = Echo::default();
    let server = configure(quick_server().tls(acceptor)).start("127.0.0.1:0", echo.clone()).unwrap();
    (server, echo)
}

/// A blocking wss:// test client.
struct WssClient {
    socket: TcpStream,
    tls: TlsStream,
    decoder: Decoder,
    pending: Vec<u8>,
}

impl WssClient {
    fn connect(addr: SocketAddr, root: &str) -> io::Result<WssClient> {
        let mut socket = connect(addr);
        let mut tls = TlsConnector::with_root_pem(root.as_bytes()).unwrap().session("localhost").unwrap();
        tls.handshake(&mut socket)?;
        let mut client = WssClient { socket, tls, decoder: Decoder::new(Role::Client), pending: Vec::new() };
        client.write_all(&upgrade_request("/tls", &[]))?;
        let head_end = loop {
            if let Some(at) = client.pending.windows(4).position(|w| w == b"\r\n\r\n") {
                break at + 4;
            }
            client.fill()?;
        };
        let head = String::from_utf8_lossy(&client.pending[..head_end]).into_owned();
        assert!(head.starts_with("HTTP/1.1 101"), "{head}");
        client.pending.drain(..head_end);
        Ok(client)
    }

    fn write_all(&mut self, mut bytes: &[u8]) -> io::Result<()> {
        while !bytes.is_empty() {
            let n = self.tls.write(&mut self.socket, bytes)?;
            bytes = &bytes[n..];
        }
        self.tls.flush(&mut self.socket)
    }

    fn fill(&mut self) -> io::Result<()> {
        let mut buf = [0; 16 << 10];
        let n = self.tls.read(&mut self.socket, &mut buf)?;
        if n == 0 {
            return Err(io::ErrorKind::UnexpectedEof.into());
        }
        self.pending.extend_from_slice(&buf[..n]);
        Ok(())
    }

    fn send(&mut self, opcode: OpCode, payload: &[u8]) {
        let mut frame = Vec::new();
        encode_frame(&mut frame, opcode, true, Some([3, 1, 4, 1]), payload);
        self.write_all(&frame).unwrap();
    }

    fn recv(&mut self) -> Frame {
        let limits = Limits::default();
        loop {
            if !self.pending.is_empty() {
                let decoded = self.decoder.decode(&mut self.pending, &limits).unwrap();
                let consumed = decoded.consumed;
                let frame = decoded.event.map(|event: Event<'_>| Frame::from(event));
                self.pending.drain(..consumed);
                if let Some(frame) = frame {
                    return frame;
                }
            }
            self.fill().expect("a frame from the server");
        }
    }
}

#[test]
fn echo_over_tls_small_and_large_then_close() {
    let (cert, key) = identity();
    let (server, echo) = tls_server(&cert, &key, |s| s);
    let mut client = WssClient::connect(server.local_addr(), &cert).unwrap();
    client.send(OpCode::Text, b"hello over tls");
    assert_eq!(client.recv(), Frame::text("hello over tls"));
    // Many TLS records (16 KiB each), within the default 1 MiB send budget.
    let big: Vec<u8> = (0..900_000u32).map(|i| (i % 251) as u8).collect();
    client.send(OpCode::Binary, &big);
    let echoed = client.recv();
    assert!(echoed == Frame::Binary(big), "the 900 KB echo differs");
    client.send(OpCode::Close, &1000u16.to_be_bytes());
    assert_eq!(client.recv(), Frame::Close(Some(1000), String::new()));
    let id = echo.events.wait_opened("/tls");
    let reason = echo.events.wait_closed(id);
    assert!(matches!(reason, CloseReason::Peer { code: Some(CloseCode::NORMAL), .. }), "{reason:?}");
    server.shutdown();
}

#[test]
fn many_tls_clients_at_once() {
    let (cert, key) = identity();
    let (server, _) = tls_server(&cert, &key, |s| s.workers(2));
    let addr = server.local_addr();
    let threads: Vec<_> = (0..8)
        .map(|i| {
            let cert = cert.clone();
            std::thread::spawn(move || {
                let mut client = WssClient::connect(addr, &cert).unwrap();
                for round in 0..20 {
                    let text = format!("client {i} round {round}");
                    client.send(OpCode::Text, text.as_bytes());
                    assert_eq!(client.recv(), Frame::Text(text));
                }
            })
        })
        .collect();
    for thread in threads {
        thread.join().unwrap();
    }
    server.shutdown();
}

#[test]
fn an_untrusted_certificate_or_plain_tcp_gets_no_websocket() {
    let (cert, key) = identity();
    let (other, _) = identity();
    let (server, _) = tls_server(&cert, &key, |s| s);
    let error = WssClient::connect(server.local_addr(), &other).err().expect("the client refuses the certificate");
    assert!(error.to_string().contains("certificate"), "{error}");
    // Plain HTTP to a TLS port is not an upgrade: the server drops it.
    let mut plain = connect(server.local_addr());
    plain.write_all(&upgrade_request("/", &[])).unwrap();
    let mut buf = [0; 64];
    let read = plain.read(&mut buf);
    assert!(!matches!(read, Ok(n) if n > 0 && buf.starts_with(b"HTTP/1.1 101")), "{read:?}");
    server.shutdown();
}
