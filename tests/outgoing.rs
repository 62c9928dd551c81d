//! Outgoing connections on the server runtime (`ServerHandle::connect`): a
//! worker dials another server and drives the connection through the same
//! `Handler` as accepted ones, over real loopback sockets.

mod common;

use std::io::{Read, Write};
use std::net::TcpListener;
use std::sync::{Arc, Condvar, Mutex};
use std::time::Instant;

use common::*;
use emitws::client::{ClientBuilder, ClientError};
use emitws::proto::{CloseCode, CloseReason, Message};
use emitws::runtime::{Accept, Conn, Handler, Keepalive, Reject, UpgradeRequest};

/// Lines logged by the dialing server's handler, with bounded waits.
#[derive(Debug, Default)]
struct Log {
    lines: Mutex<Vec<String>>,
    changed: Condvar,
}

impl Log {
    fn push(&self, line: String) {
        self.lines.lock().unwrap().push(line);
        self.changed.notify_all();
    }

    /// Waits until a line starts with `prefix`; returns it.
    fn wait(&self, prefix: &str) -> String {
        let deadline = Instant::now() + WAIT;
        let mut lines = self.lines.lock().unwrap();
        loop {
            if let Some(line) = lines.iter().find(|l| l.starts_with(prefix)) {
                return line.clone();
            }
            let left = deadline.saturating_duration_since(Instant::now());
            assert!(!left.is_zero(), "no line starting with {prefix:?}; log: {:?}", *lines);
            lines = self.changed.wait_timeout(lines, left).unwrap().0;
        }
    }
}

/// Greets every connection it opens, closes after the echo, logs everything.
#[derive(Clone, Default)]
struct Dialer {
    log: Arc<Log>,
}

impl Handler for Dialer {
    type Data = String;

    fn on_open(&mut self, conn: &mut Conn<'_, String>) {
        self.log.push(format!("open {}", conn.data()));
        let _ = conn.send_text(&format!("hello from {}", conn.data()));
    }

    fn on_message(&mut self, conn: &mut Conn<'_, String>, message: Message<'_>) {
        if let Message::Text(text) = message {
            self.log.push(format!("message {}: {text}", conn.data()));
            conn.close(CloseCode::NORMAL, "thanks");
        }
    }

    fn on_close(&mut self, conn: &mut Conn<'_, String>, reason: &CloseReason) {
        let kind = match reason {
            CloseReason::Peer { .. } => "peer",
            CloseReason::KeepaliveTimeout(_) => "keepalive",
            _ => "other",
        };
        self.log.push(format!("close {}: {} {kind}", conn.data(), reason.code()));
    }

    fn on_connect_error(&mut self, data: String, error: ClientError) {
        let kind = match &error {
            ClientError::Refused { .. } => "refused".to_string(),
            ClientError::Timeout => "timeout".to_string(),
            ClientError::Status { status, body } => format!("status {status} {}", String::from_utf8_lossy(body)),
            #[cfg(feature = "tls")]
            ClientError::Tls(emitws::tls::TlsError::Handshake(_)) => "tls handshake".to_string(),
            other => format!("other {other}"),
        };
        self.log.push(format!("failed {data}: {kind}"));
    }
}

/// Refuses `/private` with 403.
#[derive(Clone)]
struct Doorman;

impl Handler for Doorman {
    type Data = ();
    fn on_upgrade(&mut self, request: &UpgradeRequest<'_>) -> Result<Accept<()>, Reject> {
        match request.path() {
            "/private" => Err(Reject { status: 403, body: "members only".into() }),
            _ => Ok(Accept::new(())),
        }
    }
    fn on_message(&mut self, _: &mut Conn<'_, ()>, _: Message<'_>) {}
}

#[test]
fn a_worker_dials_out_and_drives_the_connection_through_its_handler() {
    let upstream_echo = Echo::default();
    let upstream = quick_server().start("127.0.0.1:0", upstream_echo.clone()).unwrap();
    let dialer = Dialer::default();
    let hub = quick_server().start("127.0.0.1:0", dialer.clone()).unwrap();
    let settings = ClientBuilder::new().timeout(WAIT);
    let url = format!("ws://{}/feed", upstream.local_addr());
    hub.handle().connect(&url, &settings, "feed".to_string()).unwrap();
    dialer.log.wait("open feed");
    // Our own server fails unmasked client frames with 1002: the echo proves masking.
    assert_eq!(dialer.log.wait("message feed"), "message feed: hello from feed");
    assert_eq!(dialer.log.wait("close feed"), "close feed: 1000 peer");
    let id = upstream_echo.events.wait_opened("/feed");
    let reason = upstream_echo.events.wait_closed(id);
    assert!(matches!(&reason, CloseReason::Peer { code: Some(CloseCode::NORMAL), reason } if reason == "thanks"));
    wait_connection_count(&hub.handle(), 0);
    hub.shutdown();
    upstream.shutdown();
}

#[test]
fn failures_come_back_to_on_connect_error_with_the_data() {
    let dialer = Dialer::default();
    let hub = quick_server().start("127.0.0.1:0", dialer.clone()).unwrap();
    let doorman = quick_server().start("127.0.0.1:0", Doorman).unwrap();
    let handle = hub.handle();
    let quick = ClientBuilder::new().timeout(ms(300));

    let port = TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    handle.connect(&format!("ws://127.0.0.1:{port}/"), &quick, "closed-port".to_string()).unwrap();
    assert_eq!(dialer.log.wait("failed closed-port"), "failed closed-port: refused");

    handle.connect(&format!("ws://{}/private", doorman.local_addr()), &quick, "door".to_string()).unwrap();
    assert_eq!(dialer.log.wait("failed door"), "failed door: status 403 members only");

    let silent = TcpListener::bind("127.0.0.1:0").unwrap();
    let silent_addr = silent.local_addr().unwrap();
    let holder = std::thread::spawn(move || {
        let (mut socket, _) = silent.accept().unwrap();
        socket.set_read_timeout(Some(WAIT)).unwrap();
        let mut sink = Vec::new();
        let _ = socket.read_to_end(&mut sink);
    });
    handle.connect(&format!("ws://{silent_addr}/"), &quick, "silent".to_string()).unwrap();
    assert_eq!(dialer.log.wait("failed silent"), "failed silent: timeout");
    holder.join().unwrap();

    // Refused at once, without reaching a worker.
    assert!(matches!(handle.connect("http://x/", &quick, "url".to_string()), Err(ClientError::Url(_))));
    let wrong_data = handle.connect(&format!("ws://{}/", doorman.local_addr()), &quick, 42u32);
    assert!(matches!(wrong_data, Err(ClientError::WrongDataType)), "{wrong_data:?}");
    wait_connection_count(&handle, 0);
    hub.shutdown();
    let stopped = handle.connect(&format!("ws://{}/", doorman.local_addr()), &quick, "late".to_string());
    assert!(matches!(stopped, Err(ClientError::ServerStopped)), "{stopped:?}");
    doorman.shutdown();
}

/// An echo server on `wss://` with a fresh self-signed certificate (its PEM
/// returned, for a client to trust), and a hub server that dials out.
#[cfg(feature = "tls")]
fn tls_upstream_and_hub() -> (String, emitws::runtime::RunningServer, emitws::runtime::RunningServer, Dialer) {
    let (cert_pem, key_pem) = identity();
    let acceptor = emitws::tls::TlsAcceptor::from_pem(cert_pem.as_bytes(), key_pem.as_bytes()).unwrap();
    let upstream = quick_server().tls(acceptor).start("127.0.0.1:0", Echo::default()).unwrap();
    let dialer = Dialer::default();
    let hub = quick_server().start("127.0.0.1:0", dialer.clone()).unwrap();
    (cert_pem, upstream, hub, dialer)
}

#[cfg(feature = "tls")]
#[test]
fn a_worker_dials_out_over_tls() {
    let (cert_pem, upstream, hub, dialer) = tls_upstream_and_hub();
    let roots = emitws::tls::TlsConnector::with_root_pem(cert_pem.as_bytes()).unwrap();
    let settings = ClientBuilder::new().timeout(WAIT).tls(roots);
    let url = format!("wss://localhost:{}/secure", upstream.local_addr().port());
    hub.handle().connect(&url, &settings, "secure".to_string()).unwrap();
    assert_eq!(dialer.log.wait("message secure"), "message secure: hello from secure");
    assert_eq!(dialer.log.wait("close secure"), "close secure: 1000 peer");
    hub.shutdown();
    upstream.shutdown();
}

#[cfg(feature = "tls")]
#[test]
fn a_dial_to_an_untrusted_certificate_fails_as_a_tls_handshake() {
    let (_, upstream, hub, dialer) = tls_upstream_and_hub();
    // The default roots (webpki) do not trust the test's self-signed certificate.
    let settings = ClientBuilder::new().timeout(WAIT);
    let url = format!("wss://localhost:{}/secure", upstream.local_addr().port());
    hub.handle().connect(&url, &settings, "untrusted".to_string()).unwrap();
    assert_eq!(dialer.log.wait("failed untrusted"), "failed untrusted: tls handshake");
    wait_connection_count(&hub.handle(), 0);
    hub.shutdown();
    upstream.shutdown();
}

#[test]
fn a_dialed_connection_keeps_its_builders_limits() {
    let big = vec![b'x'; 2000];
    let (addr, server) = scripted(move |mut socket, key| {
        socket.write_all(switching(&key, "").as_bytes()).unwrap();
        let mut frame = Vec::new();
        emitws::proto::encode_frame(&mut frame, emitws::proto::OpCode::Binary, true, None, &big);
        socket.write_all(&frame).unwrap();
        close_code_from(&mut socket)
    });
    let dialer = Dialer::default();
    // The dialing server allows 16 MiB; the connection asked for 1,000 bytes.
    let running = quick_server().start("127.0.0.1:0", dialer.clone()).unwrap();
    let settings = ClientBuilder::new().max_message_size(1000);
    running.handle().connect(&format!("ws://{addr}/"), &settings, "small".to_string()).unwrap();
    assert_eq!(dialer.log.wait("close small"), "close small: 1009 other");
    assert_eq!(server.join().unwrap(), Some(1009));
    running.shutdown();
}

#[test]
fn a_dialed_connection_closes_with_the_keepalive_code_when_pings_go_unanswered() {
    let (addr, peer) = scripted(move |mut socket, key| {
        socket.write_all(switching(&key, "").as_bytes()).unwrap();
        // Never answer: the dialer's keepalive pings, then closes.
        close_code_from(&mut socket)
    });
    let dialer = Dialer::default();
    let keepalive = Keepalive { idle: ms(100), timeout: ms(100), close_code: CloseCode(4001) };
    let running = quick_server().keepalive(Some(keepalive)).start("127.0.0.1:0", dialer.clone()).unwrap();
    running.handle().connect(&format!("ws://{addr}/"), &ClientBuilder::new(), "quiet".to_string()).unwrap();
    assert_eq!(peer.join().unwrap(), Some(4001));
    assert_eq!(dialer.log.wait("close quiet"), "close quiet: 4001 keepalive");
    running.shutdown();
}
