//! The client the Autobahn fuzzing server tests (`wstest -m fuzzingserver`).
//!
//! `cargo run --release --example autobahn_client -- ws://127.0.0.1:9001`
//!
//! Asks the server how many cases there are (`/getCaseCount`), runs each
//! (`/runCase?case=N&agent=emitws`) by echoing every message until the
//! server closes, then has the reports written (`/updateReports?agent=emitws`).
//! Prints `cases: N` first, for autobahn/run-client.sh to hold the report to.
//! Limits are raised as far as the suite needs (9.x: 16 MiB messages, up to
//! 65,536 fragments), and permessage-deflate is offered, for every message
//! whatever its size, so that cases 12.* and 13.* exercise the codec.

#[path = "support/logs.rs"]
mod logs;

use emitws::client::{ClientBuilder, ClientError};
use emitws::proto::deflate::DeflateConfig;
use emitws::proto::{CloseCode, Message};

const AGENT: &str = "emitws";

fn main() -> Result<(), ClientError> {
    logs::init();
    let base = std::env::args().nth(1).unwrap_or_else(|| "ws://127.0.0.1:9001".into());
    let base = base.trim_end_matches('/');
    let plain = ClientBuilder::new();
    let mut counter = plain.connect(&format!("{base}/getCaseCount"))?;
    let count: usize = match counter.recv()? {
        Message::Text(text) => text.trim().parse().expect("the case count is a number"),
        Message::Binary(_) => panic!("the case count came as binary"),
    };
    let _ = counter.close(CloseCode::NORMAL, "");
    println!("cases: {count}");

    let builder = ClientBuilder::new()
        .max_message_size(64 << 20)
        .max_frame_size(64 << 20)
        .max_fragments(1 << 20)
        .deflate(Some(DeflateConfig { min_size: 0, ..DeflateConfig::default() }));
    let (mut text, mut binary) = (String::new(), Vec::new());
    for case in 1..=count {
        let mut client = match builder.connect(&format!("{base}/runCase?case={case}&agent={AGENT}")) {
            Ok(client) => client,
            Err(e) => {
                eprintln!("case {case}: {e}");
                continue;
            }
        };
        loop {
            // The message borrows the client's buffer, and sending needs the client: copy it.
            let is_text = match client.recv() {
                Ok(Message::Text(received)) => {
                    text.clear();
                    text.push_str(received);
                    true
                }
                Ok(Message::Binary(received)) => {
                    binary.clear();
                    binary.extend_from_slice(received);
                    false
                }
                Err(_) => break,
            };
            let sent = if is_text { client.send_text(&text) } else { client.send_binary(&binary) };
            if sent.is_err() {
                break;
            }
        }
    }

    let mut reports = plain.connect(&format!("{base}/updateReports?agent={AGENT}"))?;
    // The server closes once the reports are written.
    while reports.recv().is_ok() {}
    Ok(())
}
