//! What a request costs the server in the codec, JSON against MessagePack
//! (docs/BENCHMARKS.md, "MessagePack payloads"): for `ITERATIONS` requests
//! of one `SHAPE`, the data read and the reply written as a handler does it
//! — `req.data::<T>()` then `req.reply(&T)` (serde_json from the envelope's
//! text, the reply written after `[2,id,`), or `req.msgpack::<T>()` then
//! `req.reply_msgpack(&T)` (emitws::app::msgpack's decode and encode, the
//! bytes then copied after the binary header, as `reply_binary` does).
//! Framing, masking and the socket are left out: they are the same code for
//! both, on payloads of the sizes printed.
//!
//! `cargo run --release --features msgpack --example msgpack_cost -- json|msgpack chat|kib ITERATIONS`
//! prints the payload's size in each encoding; run it under
//! `valgrind --tool=callgrind` at two iteration counts and divide the
//! difference of the instruction totals by the difference of the counts.

use std::hint::black_box;

use serde::{Deserialize, Serialize};

/// A typical chat message.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct ChatMessage {
    id: u64,
    room: String,
    user: String,
    text: String,
    sent_at_ms: u64,
    reply_to: Option<u64>,
    mentions: Vec<String>,
}

/// A struct carrying 1 KiB of bytes.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct Attachment {
    name: String,
    mime: String,
    bytes: Vec<u8>,
    checksum: u32,
}

fn chat() -> ChatMessage {
    ChatMessage {
        id: 48_213,
        room: "#general".into(),
        user: "alice".into(),
        text: "Meeting moved to 15:30 — café on the 2nd floor, bring the slides!".into(),
        sent_at_ms: 1_796_598_000_123,
        reply_to: Some(48_190),
        mentions: vec!["bob".into(), "chloé".into()],
    }
}

fn attachment() -> Attachment {
    let bytes: Vec<u8> = (0..1024u32).map(|i| (i.wrapping_mul(2_654_435_761) >> 24) as u8).collect();
    let checksum = bytes.iter().map(|&b| u32::from(b)).sum();
    Attachment { name: "thumb.png".into(), mime: "image/png".into(), bytes, checksum }
}

/// `iterations` requests through serde_json: the data read from the
/// envelope's text, the reply written into a reused buffer.
fn json_requests<T: Serialize + for<'de> Deserialize<'de>>(value: &T, iterations: u64) {
    let text = serde_json::to_string(value).expect("JSON");
    println!("json payload: {} bytes", text.len());
    let mut out = Vec::new();
    for id in 1..=iterations {
        let data: T = serde_json::from_str(black_box(&text)).expect("reads");
        out.clear();
        out.extend_from_slice(b"[2,");
        out.extend_from_slice(itoa::Buffer::new().format(id).as_bytes());
        out.push(b',');
        serde_json::to_writer(&mut out, &data).expect("writes");
        out.push(b']');
        black_box(&out);
    }
}

/// `iterations` requests through this crate's MessagePack layer: decode,
/// encode, the bytes copied after the reply's header.
fn msgpack_requests<T: Serialize + for<'de> Deserialize<'de>>(value: &T, iterations: u64) {
    let bytes = emitws::app::msgpack::encode(value).expect("MessagePack");
    println!("msgpack payload: {} bytes", bytes.len());
    let mut out = Vec::new();
    for id in 1..=iterations {
        let data: T = emitws::app::msgpack::decode(black_box(&bytes)).expect("reads");
        let reply = emitws::app::msgpack::encode(&data).expect("writes");
        out.clear();
        out.push(2);
        out.extend_from_slice(&id.to_le_bytes()[..3]);
        out.extend_from_slice(&reply);
        black_box(&out);
    }
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let usage = "usage: msgpack_cost json|msgpack chat|kib ITERATIONS";
    let [codec, shape, iterations] = &args[..] else { panic!("{usage}") };
    let iterations: u64 = iterations.parse().expect(usage);
    match (codec.as_str(), shape.as_str()) {
        ("json", "chat") => json_requests(&chat(), iterations),
        ("json", "kib") => json_requests(&attachment(), iterations),
        ("msgpack", "chat") => msgpack_requests(&chat(), iterations),
        ("msgpack", "kib") => msgpack_requests(&attachment(), iterations),
        _ => panic!("{usage}"),
    }
}
