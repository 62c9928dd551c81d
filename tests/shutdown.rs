//! SIGTERM on the chat demo (the built example binary): every client gets a
//! 1001 close frame, the process exits 0, and an event client reconnects to
//! a second chat server. The client reaches the servers through a small TCP
//! proxy, as it would through a load balancer: the proxy sends each new
//! connection to the first server, or to the second once the first refuses.
//! The clients that check the close frames are raw sockets, written here.
#![cfg(feature = "app")]

#[path = "common/examples.rs"]
mod examples;

use std::io::{Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use emitws::client::app::{AppClient, AppOptions};
use examples::{binary, free_addr};
use serde_json::json;

/// How long any one step may take before the test fails.
const WAIT: Duration = Duration::from_secs(10);
/// Raw clients on the server that is stopped.
const RAW_CLIENTS: usize = 5;

/// A chat server process, killed if the test ends first.
struct Chat {
    child: Child,
    addr: SocketAddr,
}

impl Chat {
    fn start() -> Chat {
        let addr = free_addr();
        let child = Command::new(binary("chat"))
            .args(["--addr", &addr.to_string()])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("start the chat example");
        let deadline = Instant::now() + WAIT;
        while TcpStream::connect(addr).is_err() {
            assert!(Instant::now() < deadline, "the chat server did not listen on {addr}");
            std::thread::sleep(Duration::from_millis(20));
        }
        Chat { child, addr }
    }

    fn terminate(&self) {
        let status = Command::new("kill").args(["-TERM", &self.child.id().to_string()]).status().expect("run kill");
        assert!(status.success(), "kill -TERM failed");
    }

    fn wait_exit(&mut self) -> ExitStatus {
        let deadline = Instant::now() + WAIT;
        loop {
            if let Some(status) = self.child.try_wait().expect("the chat's status") {
                return status;
            }
            assert!(Instant::now() < deadline, "the chat server still runs {WAIT:?} after SIGTERM");
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Chat {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A raw WebSocket client on `/chat`: the upgrade, then frames read by hand.
struct RawClient(TcpStream);

impl RawClient {
    fn connect(addr: SocketAddr) -> RawClient {
        let mut stream = TcpStream::connect(addr).expect("connect");
        stream.set_read_timeout(Some(WAIT)).expect("read timeout");
        let request = format!(
            "GET /chat HTTP/1.1\r\nHost: {addr}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
             Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\
             Sec-WebSocket-Protocol: emitws.v1\r\n\r\n"
        );
        stream.write_all(request.as_bytes()).expect("send the upgrade");
        let mut head = Vec::new();
        let mut byte = [0];
        while !head.ends_with(b"\r\n\r\n") {
            stream.read_exact(&mut byte).expect("the upgrade response");
            head.push(byte[0]);
        }
        let head = String::from_utf8_lossy(&head);
        assert!(head.starts_with("HTTP/1.1 101"), "upgrade refused: {head}");
        RawClient(stream)
    }

    /// Skips data frames until a close frame; returns its code after answering it.
    fn expect_close(&mut self) -> u16 {
        loop {
            let mut header = [0; 2];
            self.0.read_exact(&mut header).expect("a frame before the connection ended");
            let mut len = u64::from(header[1] & 0x7f);
            if len == 126 {
                let mut ext = [0; 2];
                self.0.read_exact(&mut ext).expect("a 16-bit length");
                len = u64::from(u16::from_be_bytes(ext));
            } else if len == 127 {
                let mut ext = [0; 8];
                self.0.read_exact(&mut ext).expect("a 64-bit length");
                len = u64::from_be_bytes(ext);
            }
            let mut payload = vec![0; len as usize];
            self.0.read_exact(&mut payload).expect("a frame's payload");
            if header[0] & 0x0f == 0x8 {
                assert!(payload.len() >= 2, "a close frame without a code");
                let code = u16::from_be_bytes([payload[0], payload[1]]);
                // The masked close reply: 1000, masked with 1 2 3 4.
                let mask = [1, 2, 3, 4];
                let body = [0x03 ^ mask[0], 0xe8 ^ mask[1]];
                let frame = [0x88, 0x82, mask[0], mask[1], mask[2], mask[3], body[0], body[1]];
                let _ = self.0.write_all(&frame);
                return code;
            }
        }
    }
}

/// A TCP proxy on a port of its own: each connection goes to the first of
/// `backends` that accepts it. Runs until the test process ends.
fn proxy(backends: [SocketAddr; 2]) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind the proxy");
    let addr = listener.local_addr().expect("the proxy's address");
    std::thread::spawn(move || {
        for client in listener.incoming() {
            let Ok(client) = client else { continue };
            let Some(server) = backends.iter().find_map(|backend| TcpStream::connect(backend).ok()) else { continue };
            for (mut from, mut to) in
                [(client.try_clone().expect("clone"), server.try_clone().expect("clone")), (server, client)]
            {
                std::thread::spawn(move || {
                    let _ = std::io::copy(&mut from, &mut to);
                    let _ = to.shutdown(Shutdown::Write);
                });
            }
        }
    });
    addr
}

#[test]
fn sigterm_closes_every_client_with_1001_exits_0_and_clients_reconnect_to_another_server() {
    let mut first = Chat::start();
    let second = Chat::start();
    let proxied = proxy([first.addr, second.addr]);

    let mut raw: Vec<RawClient> = (0..RAW_CLIENTS).map(|_| RawClient::connect(first.addr)).collect();
    let options = AppOptions::default().reconnect_delay(Duration::from_millis(100));
    let client = AppClient::connect(&format!("ws://{proxied}/chat"), options).expect("the client connects");
    let join = json!({"room": "general", "name": "ann"});
    let joined = client.request("/chat/join", join.clone(), WAIT).expect("joined on the first server");
    assert_eq!(joined["room"], "general");
    let (tell, closes) = mpsc::channel();
    client.on("@disconnect", move |_, why| drop(tell.send(why["code"].clone())));

    first.terminate();
    let codes: Vec<u16> = raw.iter_mut().map(RawClient::expect_close).collect();
    assert_eq!(codes, [1001; RAW_CLIENTS]);
    // Their close handshakes are over: the TCP connections end too.
    drop(raw);
    assert_eq!(closes.recv_timeout(WAIT).expect("the event client's @disconnect"), 1001);
    let status = first.wait_exit();
    assert_eq!(status.code(), Some(0), "the chat server exited with {status}");

    // The first server is gone: the answer comes from the second.
    let joined = client.request("/chat/join", join, WAIT).expect("joined on the second server");
    assert_eq!(joined["room"], "general");
    assert_eq!(joined["users"], json!(["ann"]));
    client.close();
    drop(second);
}
