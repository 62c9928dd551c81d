//! A raw `emitws.v1` client for the app tests, on the blocking test client:
//! envelopes are built and read as `serde_json::Value`s, so the tests see
//! exactly what travels.

#![allow(dead_code)]

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use crate::common::{http, upgrade_request, Client, Frame, HttpReply, RecvError, WAIT};
use emitws::app::{App, Running};

/// Starts `app` on a quick test server (short timeouts, no keepalive) with `workers` workers.
pub fn start(app: App, workers: usize) -> Running {
    app.listen_with(crate::common::quick_server().workers(workers), "127.0.0.1:0").expect("start the app")
}

/// A connected emitws.v1 client.
pub struct AppClient {
    pub ws: Client,
    next_id: u64,
    /// Envelopes received while waiting for something else.
    inbox: VecDeque<Value>,
    /// The data of the server's `@ready`, once read: kept out of the inbox,
    /// since every admitted socket gets one.
    pub ready: Option<Value>,
}

impl AppClient {
    /// Connects to `/`, offering `emitws.v1`, and waits for the server's
    /// `@ready` (for apps without first-message or challenge auth; those
    /// use [`connect_to`](Self::connect_to), then [`wait_ready`](Self::wait_ready)).
    pub fn connect(addr: SocketAddr) -> AppClient {
        let mut client =
            AppClient::connect_to(addr, "/", &[]).unwrap_or_else(|reply| panic!("upgrade refused: {reply:?}"));
        client.wait_ready();
        client
    }

    /// Waits for the server's `@ready`; returns its data. Envelopes before it are kept.
    pub fn wait_ready(&mut self) -> Value {
        while self.ready.is_none() {
            let envelope = parse(&self.read_text());
            if !self.keep_ready(&envelope) {
                self.inbox.push_back(envelope);
            }
        }
        self.ready.clone().expect("checked above")
    }

    /// Connects to `path` with extra headers; the HTTP reply if refused.
    pub fn connect_to(addr: SocketAddr, path: &str, headers: &[(&str, &str)]) -> Result<AppClient, HttpReply> {
        let mut headers = headers.to_vec();
        headers.push(("Sec-WebSocket-Protocol", "emitws.v1"));
        let (stream, reply, rest) = http(addr, &upgrade_request(path, &headers));
        if reply.status != 101 {
            return Err(reply);
        }
        assert_eq!(reply.header("sec-websocket-protocol"), Some("emitws.v1"));
        Ok(AppClient { ws: Client::from_parts(stream, rest), next_id: 0, inbox: VecDeque::new(), ready: None })
    }

    pub fn send_raw(&mut self, text: &str) {
        self.ws.send_text(text);
    }

    pub fn emit(&mut self, event: &str, data: Value) {
        self.send_raw(&json!([0, event, data]).to_string());
    }

    /// Sends a request and returns its id.
    pub fn send_request(&mut self, event: &str, data: Value) -> u64 {
        self.next_id += 1;
        let id = self.next_id;
        self.send_raw(&json!([1, id, event, data]).to_string());
        id
    }

    /// Sends a request and waits for its reply: the data, or (code, message).
    pub fn request(&mut self, event: &str, data: Value) -> Result<Value, (String, String)> {
        let id = self.send_request(event, data);
        self.reply_to(id)
    }

    /// Waits for the reply to `id`, keeping other envelopes for later.
    pub fn reply_to(&mut self, id: u64) -> Result<Value, (String, String)> {
        let deadline = Instant::now() + WAIT;
        loop {
            if let Some(at) = self.inbox.iter().position(|e| (e[0] == 2 || e[0] == 3) && e[1] == id) {
                let envelope = self.inbox.remove(at).expect("found");
                return match envelope[0].as_u64() {
                    Some(2) => Ok(envelope[2].clone()),
                    _ => Err(error_parts(&envelope[2])),
                };
            }
            assert!(Instant::now() < deadline, "no reply to request {id}; got {:?}", self.inbox);
            let envelope = self.read();
            self.inbox.push_back(envelope);
        }
    }

    /// The next envelope (kept ones first).
    pub fn next(&mut self) -> Value {
        match self.inbox.pop_front() {
            Some(envelope) => envelope,
            None => self.read(),
        }
    }

    /// The next envelope (kept ones first), if one comes within `timeout`.
    pub fn next_within(&mut self, timeout: Duration) -> Option<Value> {
        if let Some(envelope) = self.inbox.pop_front() {
            return Some(envelope);
        }
        let deadline = Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.ws.try_recv_within(left.max(Duration::from_millis(1))) {
                Ok(Frame::Text(text)) => {
                    let envelope = parse(&text);
                    if !self.keep_ready(&envelope) {
                        return Some(envelope);
                    }
                }
                Ok(Frame::Ping(payload)) => self.ws.send(emitws::proto::OpCode::Pong, true, &payload),
                Ok(other) => panic!("expected an envelope, got {other:?}"),
                Err(RecvError::Timeout) => return None,
                Err(e) => panic!("connection failed: {e:?}"),
            }
        }
    }

    /// Expects the next envelope to be event `event`; returns its data.
    pub fn expect_event(&mut self, event: &str) -> Value {
        let envelope = self.next();
        assert!(envelope[0] == 0 && envelope[1] == event, "expected event {event}, got {envelope}");
        envelope.get(2).cloned().unwrap_or(Value::Null)
    }

    /// Expects an `@error` event with this code; returns its message.
    pub fn expect_error_event(&mut self, code: &str) -> String {
        let data = self.expect_event("@error");
        assert_eq!(data["code"], code, "{data}");
        data["message"].as_str().unwrap_or_default().to_string()
    }

    /// Expects nothing for `duration`.
    pub fn expect_silence(&mut self, duration: Duration) {
        assert!(self.inbox.is_empty(), "unexpected envelopes {:?}", self.inbox);
        self.ws.expect_silence(duration);
    }

    /// Expects a close frame with `code` (envelopes before it are an error); returns the reason.
    pub fn expect_close(&mut self, code: u16) -> String {
        assert!(self.inbox.is_empty(), "unexpected envelopes {:?}", self.inbox);
        self.ws.expect_close(code)
    }

    /// The next envelope's text exactly as it came (nothing may be kept
    /// from earlier reads), for what a JSON value would not show as sent.
    pub fn next_text(&mut self) -> String {
        assert!(self.inbox.is_empty(), "unexpected envelopes {:?}", self.inbox);
        loop {
            let text = self.read_text();
            // Data may be JSON that serde_json's Value cannot hold (`1e400`): then it is no @ready.
            match serde_json::from_str(&text) {
                Ok(envelope) if self.keep_ready(&envelope) => {}
                _ => return text,
            }
        }
    }

    /// Reads one envelope other than the first `@ready`.
    fn read(&mut self) -> Value {
        loop {
            let envelope = parse(&self.read_text());
            if !self.keep_ready(&envelope) {
                return envelope;
            }
        }
    }

    /// Keeps the first `@ready`'s data; whether `envelope` was it.
    fn keep_ready(&mut self, envelope: &Value) -> bool {
        let first_ready = self.ready.is_none() && envelope[0] == 0 && envelope[1] == "@ready";
        if first_ready {
            self.ready = Some(envelope.get(2).cloned().unwrap_or(Value::Null));
        }
        first_ready
    }

    /// Reads one text frame (answering pings on the way).
    fn read_text(&mut self) -> String {
        loop {
            match self.ws.try_recv() {
                Ok(Frame::Text(text)) => return text,
                Ok(Frame::Ping(payload)) => self.ws.send(emitws::proto::OpCode::Pong, true, &payload),
                Ok(other) => panic!("expected an envelope, got {other:?}"),
                Err(RecvError::Timeout) => panic!("no envelope within {WAIT:?}"),
                Err(e) => panic!("connection failed: {e:?}"),
            }
        }
    }

    /// Closes from our side with 1000.
    pub fn close(self) {
        assert!(self.inbox.is_empty(), "unexpected envelopes {:?}", self.inbox);
        self.ws.close(1000);
    }

    /// Closes from our side with 1000 while events may still be on their
    /// way (a broadcast that crossed Redis before its sender stopped): the
    /// envelopes that arrive before the close's echo are dropped.
    pub fn close_amid_events(mut self) {
        self.ws.send_close(1000, "");
        loop {
            match self.ws.recv() {
                Frame::Text(_) => {}
                Frame::Ping(payload) => self.ws.send(emitws::proto::OpCode::Pong, true, &payload),
                Frame::Close(Some(1000), _) => break,
                other => panic!("expected envelopes then the close's echo, got {other:?}"),
            }
        }
        self.ws.expect_eof();
    }
}

fn parse(text: &str) -> Value {
    serde_json::from_str(text).unwrap_or_else(|e| panic!("the server sends JSON, not {text:?}: {e}"))
}

fn error_parts(body: &Value) -> (String, String) {
    let text = |v: &Value| v.as_str().unwrap_or_default().to_string();
    (text(&body["code"]), text(&body["message"]))
}

/// Waits until `f` holds, failing after [`WAIT`].
pub fn eventually(what: &str, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + WAIT;
    while !f() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// Plays a client that answers the server's calls: `add` sums, `echo`
/// sends its argument back, `boom` fails, `slow` never answers, anything
/// else is not registered. Until `until` says stop (or the server closes).
pub fn answer_calls(mut client: AppClient, until: std::sync::mpsc::Receiver<()>) -> std::thread::JoinHandle<()> {
    std::thread::spawn(move || {
        client.ws.stream.set_read_timeout(Some(Duration::from_millis(20))).expect("timeout");
        while until.try_recv().is_err() {
            let frame = match client.ws.try_recv() {
                Ok(Frame::Text(text)) => text,
                Ok(_) => return,
                Err(RecvError::Timeout) => continue,
                Err(_) => return,
            };
            let call: Value = serde_json::from_str(&frame).expect("JSON");
            let id = &call[1];
            let answer = match call[2].as_str() {
                Some("add") => json!([2, id, call[3][0].as_i64().unwrap_or(0) + call[3][1].as_i64().unwrap_or(0)]),
                Some("echo") => json!([2, id, call[3]]),
                Some("boom") => json!([3, id, { "code": "execution_failed", "message": "it \"broke\" — ünïcode" }]),
                Some("slow") => continue,
                _ => json!([3, id, { "code": "not_registered", "message": "no such procedure" }]),
            };
            client.send_raw(&answer.to_string());
        }
        client.close();
    })
}
