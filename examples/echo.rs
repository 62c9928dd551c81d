//! An echo server with a small test page.
//!
//! `cargo run --release --example echo` then open http://127.0.0.1:9001/ in a
//! browser, or connect any WebSocket client to ws://127.0.0.1:9001/.
//! `--addr HOST:PORT` changes the address, `--workers N` the number of event loops
//! (default: one per core), `--accept reuseport|acceptor` how connections reach them.

use emitws::proto::handshake::Request;
use emitws::proto::Message;
use emitws::runtime::{AcceptMode, Conn, Handler, HttpResponse, Server};

const PAGE: &str = r#"<!doctype html>
<meta charset="utf-8"><title>emitws echo</title>
<style>body{font:16px system-ui;max-width:40em;margin:2em auto}#log{white-space:pre-wrap;border:1px solid #ccc;padding:1em;min-height:8em}</style>
<h1>emitws echo</h1>
<form id="f"><input id="m" autocomplete="off" placeholder="type and press enter" size="40"></form>
<p id="state">connecting…</p><div id="log"></div>
<script type="module">
const log = (line) => document.getElementById('log').textContent += line + '\n';
const ws = new WebSocket(`ws://${location.host}/`);
ws.onopen = () => document.getElementById('state').textContent = 'connected';
ws.onclose = (e) => document.getElementById('state').textContent = `closed (${e.code})`;
ws.onmessage = (e) => log('echo: ' + e.data);
document.getElementById('f').onsubmit = (e) => {
  e.preventDefault();
  const input = document.getElementById('m');
  ws.send(input.value);
  input.value = '';
};
</script>
"#;

#[derive(Clone)]
struct Echo;

impl Handler for Echo {
    type Data = ();

    fn on_message(&mut self, conn: &mut Conn<'_, ()>, message: Message<'_>) {
        let _ = match message {
            Message::Text(text) => conn.send_text(text),
            Message::Binary(bytes) => conn.send_binary(bytes),
        };
    }

    fn on_http(&mut self, request: &Request<'_>) -> Option<HttpResponse> {
        match request.path() {
            "/" => Some(HttpResponse::new(200, "text/html; charset=utf-8", PAGE)),
            "/healthz" => Some(HttpResponse::new(200, "text/plain", "ok\n")),
            _ => Some(HttpResponse::new(404, "text/plain", "not found\n")),
        }
    }
}

fn main() -> std::io::Result<()> {
    let mut args = std::env::args().skip(1);
    let mut addr = "127.0.0.1:9001".to_string();
    let mut server = Server::new();
    while let Some(arg) = args.next() {
        match (arg.as_str(), args.next()) {
            ("--addr", Some(value)) => addr = value,
            ("--workers", Some(value)) if value.parse::<usize>().is_ok() => {
                server = server.workers(value.parse().unwrap_or(1));
            }
            ("--accept", Some(value)) if value == "reuseport" || value == "acceptor" => {
                let mode = if value == "acceptor" { AcceptMode::Acceptor } else { AcceptMode::ReusePort };
                server = server.accept_mode(mode);
            }
            _ => {
                eprintln!("usage: echo [--addr HOST:PORT] [--workers N] [--accept reuseport|acceptor]");
                std::process::exit(2);
            }
        }
    }
    let server = server.start(addr.as_str(), Echo)?;
    println!("echo server on ws://{0}/ (test page: http://{0}/)", server.local_addr());
    server.join();
    Ok(())
}
