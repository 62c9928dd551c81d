//! The echo handler shared by the `echo` and `autobahn_server` examples:
//! every message goes back as it came; `/` serves a test page, `/healthz` "ok".

use emitws::proto::handshake::server::HttpRequest;
use emitws::proto::Message;
use emitws::runtime::{Conn, Handler, HttpResponse};

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

/// Echoes every message.
#[derive(Clone)]
pub struct Echo;

impl Handler for Echo {
    type Data = ();

    fn on_message(&mut self, conn: &mut Conn<'_, ()>, message: Message<'_>) {
        let _ = match message {
            Message::Text(text) => conn.send_text(text),
            Message::Binary(bytes) => conn.send_binary(bytes),
        };
    }

    fn on_http(&mut self, request: &HttpRequest<'_>) -> Option<HttpResponse> {
        match request.path() {
            "/" => Some(HttpResponse::new(200, "text/html; charset=utf-8", PAGE)),
            "/healthz" => Some(HttpResponse::new(200, "text/plain", "ok\n")),
            _ => Some(HttpResponse::new(404, "text/plain", "not found\n")),
        }
    }
}
