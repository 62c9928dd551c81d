//! The chat demo (examples/chat) is whole before its port accepts: a freshly
//! started binary answers every `/chat/join` that arrives the instant it
//! listens, written in the same packet as the upgrade request. (The store's
//! thread used to be wired after `listen` returned, and the first joins got
//! `internal: the handler dropped its reply`.)
#![cfg(feature = "app")]

mod common;
#[path = "common/examples.rs"]
mod examples;

use std::net::{SocketAddr, TcpStream};
use std::sync::{Arc, Barrier};
use std::time::{Duration, Instant};

use common::{masked_frame, read_reply, upgrade_request, Client, Frame, WAIT};
use emitws::proto::OpCode;
use examples::{free_addr, Example};
use serde_json::Value;

/// Connections per start, each sending its join at once.
const CONNECTIONS: usize = 200;
/// Fresh starts of the binary.
const STARTS: usize = 4;
/// How long a client keeps trying to connect while the binary starts.
const STARTUP: Duration = Duration::from_secs(20);

/// Connects as soon as `addr` accepts, writes the upgrade and `[1,1,"/chat/join",…]`
/// in one write, and returns the reply to request 1.
fn join_at_once(addr: SocketAddr, name: &str) -> Value {
    let mut bytes = upgrade_request("/chat", &[("Sec-WebSocket-Protocol", "emitws.v1")]);
    let join = format!(r#"[1,1,"/chat/join",{{"room":"general","name":"{name}"}}]"#);
    bytes.extend(masked_frame(OpCode::Text, true, join.as_bytes()));
    let deadline = Instant::now() + STARTUP;
    let mut stream = loop {
        match TcpStream::connect(addr) {
            Ok(stream) => break stream,
            Err(e) => {
                assert!(Instant::now() < deadline, "{addr} did not accept within {STARTUP:?}: {e}");
                std::thread::sleep(Duration::from_micros(200));
            }
        }
    };
    stream.set_read_timeout(Some(WAIT)).expect("read timeout");
    std::io::Write::write_all(&mut stream, &bytes).expect("write the upgrade and the join");
    let (reply, rest) = read_reply(&mut stream);
    assert_eq!(reply.status, 101, "{reply:?}");
    let mut client = Client::from_parts(stream, rest);
    // Other envelopes (@ready, others' presence) may come first.
    loop {
        let Frame::Text(text) = client.recv() else { continue };
        let envelope: Value = serde_json::from_str(&text).expect("the server sends JSON");
        if envelope[0].as_u64().is_some_and(|kind| kind == 2 || kind == 3) && envelope[1] == 1 {
            return envelope;
        }
    }
}

#[test]
fn a_fresh_chat_server_answers_joins_sent_with_the_upgrade() {
    for start in 0..STARTS {
        let addr = free_addr();
        let ready = Arc::new(Barrier::new(CONNECTIONS + 1));
        let clients: Vec<_> = (0..CONNECTIONS)
            .map(|n| {
                let ready = ready.clone();
                std::thread::spawn(move || {
                    ready.wait();
                    join_at_once(addr, &format!("u{n}"))
                })
            })
            .collect();
        ready.wait();
        let mut chat = Example::spawn("chat", &["--addr", &addr.to_string()]);
        let replies: Vec<Value> = clients.into_iter().map(|client| client.join().expect("a client thread")).collect();
        assert_eq!(chat.printed_addr(), addr, "the chat server started on the address it was given");
        let lost: Vec<&Value> = replies.iter().filter(|reply| reply[0] != 2 || reply[2]["room"] != "general").collect();
        assert!(lost.is_empty(), "start {start}: {} of {CONNECTIONS} joins failed: {:?}", lost.len(), &lost[..1]);
    }
}
