//! emitws-cat: a terminal WebSocket client in the manner of wscat.
//!
//! Typed lines go out as text frames, or (with `--events`) as emitws.v1
//! events and requests; whatever arrives is printed. See `--help`.

use std::io::{self, BufRead, Write};
use std::process::ExitCode;
use std::sync::mpsc::{self, Receiver, RecvTimeoutError};
use std::time::{Duration, Instant};

use emitws::client::{Client, ClientBuilder, ClientError, Incoming};
use emitws::proto::deflate::DeflateConfig;
use emitws::proto::{CloseCode, Message};
use serde_json::value::RawValue;
use serde_json::Value;

const HELP: &str = "\
emitws-cat: talk to a WebSocket server from the terminal

USAGE:
    emitws-cat [OPTIONS] URL          URL: ws://HOST[:PORT]/PATH or wss://…

Each line typed is sent as a text frame and every message received is printed
(`< text`, or `< binary N bytes: HEX` for binary). Lines starting with `:` are
commands:
    :ping [TEXT]          send a ping (the pong is printed)
    :binary HEX           send a binary frame
    :close [CODE [REASON]]  close the connection (default 1000) and exit
    :quit                 the same as :close

With --events, lines speak the emitws.v1 event protocol (PROTOCOL.md):
    /name [DATA]          send event `/name`; DATA is JSON, or else taken as a string
    ?/name [DATA]         send a request and print its reply (`< #ID DATA`)
Events arriving print as `< /name DATA`, replies as `< #ID DATA` or
`< #ID error CODE: MESSAGE`; calls from the server are answered not_registered.

OPTIONS:
    -e, --events              speak emitws.v1 (offers the subprotocol)
    -p, --protocol NAME       offer a subprotocol (repeatable)
    -H, --header 'NAME: VALUE'  add a request header (repeatable)
    -o, --origin ORIGIN       send an Origin header
        --ca FILE             wss://: trust this PEM certificate instead of the webpki roots
        --deflate             offer permessage-deflate
        --timeout SECONDS     connect and handshake timeout   [default: 10]
    -w, --wait SECONDS        once input ends, keep printing for this long, then close  [default: 1]
    -h, --help                this text

When stdin ends (a pipe, or Ctrl-D) the connection is closed with 1000 after
--wait. Exit status: 0 after a clean close, 1 if the connection failed or the
server closed with an error code, 2 for bad usage.

EXAMPLES:
    emitws-cat ws://127.0.0.1:9001/
    echo '?/ping' | emitws-cat --events ws://127.0.0.1:3000/chat
";

struct Options {
    url: String,
    events: bool,
    wait: Duration,
    builder: ClientBuilder,
}

fn parse(mut args: impl Iterator<Item = String>) -> Result<Options, String> {
    let mut url = None;
    let mut events = false;
    let mut wait = Duration::from_secs(1);
    let mut builder = ClientBuilder::new();
    let seconds = |value: Option<String>, flag: &str| -> Result<Duration, String> {
        let value = value.ok_or(format!("{flag} needs a value"))?;
        value
            .parse::<f64>()
            .ok()
            .and_then(|s| Duration::try_from_secs_f64(s).ok())
            .ok_or(format!("{flag}: not a number of seconds: {value}"))
    };
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "-h" | "--help" => return Err(String::new()),
            "-e" | "--events" => {
                events = true;
                builder = builder.protocol(emitws::app::PROTOCOL);
            }
            "-p" | "--protocol" => builder = builder.protocol(args.next().ok_or("--protocol needs a name")?),
            "-H" | "--header" => {
                let header = args.next().ok_or("--header needs 'NAME: VALUE'")?;
                let (name, value) = header.split_once(':').ok_or(format!("not a header: {header}"))?;
                builder = builder.header(name.trim(), value.trim());
            }
            "-o" | "--origin" => builder = builder.origin(args.next().ok_or("--origin needs a value")?),
            #[cfg(feature = "tls")]
            "--ca" => {
                let path = args.next().ok_or("--ca needs a file")?;
                let pem = std::fs::read(&path).map_err(|e| format!("{path}: {e}"))?;
                let connector = emitws::tls::TlsConnector::with_root_pem(&pem).map_err(|e| format!("{path}: {e}"))?;
                builder = builder.tls(connector);
            }
            "--deflate" => builder = builder.deflate(Some(DeflateConfig::default())),
            "--timeout" => builder = builder.timeout(seconds(args.next(), "--timeout")?),
            "-w" | "--wait" => wait = seconds(args.next(), "--wait")?,
            flag if flag.starts_with('-') => return Err(format!("unknown option {flag}")),
            _ if url.is_some() => return Err(format!("one URL only: {arg}")),
            _ => url = Some(arg),
        }
    }
    let url = url.ok_or("no URL given")?;
    Ok(Options { url, events, wait, builder })
}

fn main() -> ExitCode {
    let options = match parse(std::env::args().skip(1)) {
        Ok(options) => options,
        Err(why) if why.is_empty() => {
            print!("{HELP}");
            return ExitCode::SUCCESS;
        }
        Err(why) => {
            eprintln!("emitws-cat: {why}\n(emitws-cat --help for usage)");
            return ExitCode::from(2);
        }
    };
    let client = match options.builder.connect(&options.url) {
        Ok(client) => client,
        Err(e) => {
            eprintln!("emitws-cat: cannot connect to {}: {e}", options.url);
            return ExitCode::FAILURE;
        }
    };
    let protocol = client.protocol().map(|p| format!(" (subprotocol {p})")).unwrap_or_default();
    eprintln!("connected to {}{protocol}; :close to quit", options.url);
    let lines = read_lines();
    let mut session = Session { client, events: options.events, next_id: 1, out: io::stdout() };
    match session.run(&lines, options.wait) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("emitws-cat: {e}");
            ExitCode::FAILURE
        }
    }
}

/// Stdin lines, read on their own thread so that typing never blocks printing.
fn read_lines() -> Receiver<String> {
    let (sender, lines) = mpsc::channel();
    std::thread::spawn(move || {
        for line in io::stdin().lock().lines() {
            let Ok(line) = line else { break };
            if sender.send(line).is_err() {
                break;
            }
        }
    });
    lines
}

/// How often the receive loop looks at typed lines.
const POLL: Duration = Duration::from_millis(20);

struct Session {
    client: Client,
    events: bool,
    next_id: u64,
    out: io::Stdout,
}

impl Session {
    fn run(&mut self, lines: &Receiver<String>, wait: Duration) -> Result<(), ClientError> {
        self.client.set_timeout(Some(POLL))?;
        let mut input_ended: Option<Instant> = None;
        loop {
            match input_ended {
                Some(at) if at.elapsed() >= wait => return self.close(CloseCode::NORMAL, ""),
                Some(_) => {}
                None => loop {
                    match lines.recv_timeout(Duration::ZERO) {
                        Ok(line) => {
                            if let Some((code, reason)) = self.send_line(&line)? {
                                return self.close(code, &reason);
                            }
                        }
                        Err(RecvTimeoutError::Timeout) => break,
                        Err(RecvTimeoutError::Disconnected) => {
                            input_ended = Some(Instant::now());
                            break;
                        }
                    }
                },
            }
            let (line, answer) = match self.client.recv_event() {
                Ok(Incoming::Message(message)) => describe(message, self.events),
                Ok(Incoming::Pong(payload)) => (format!("< pong {}", String::from_utf8_lossy(payload)), None),
                Err(ClientError::Timeout) => continue,
                Err(ClientError::Closed(reason)) => {
                    let code = reason.code();
                    self.say(&format!("closed by the server: {code} {}", reason.reason()));
                    return if code == CloseCode::NORMAL || code == CloseCode::GOING_AWAY {
                        Ok(())
                    } else {
                        Err(ClientError::Closed(reason))
                    };
                }
                Err(e) => return Err(e),
            };
            self.say(&line);
            if let Some(answer) = answer {
                self.client.send_text(&answer)?;
            }
        }
    }

    /// Sends what a typed line says; a close request comes back instead.
    fn send_line(&mut self, line: &str) -> Result<Option<(CloseCode, String)>, ClientError> {
        if let Some(command) = line.strip_prefix(':') {
            let (name, rest) = command.split_once(' ').unwrap_or((command, ""));
            match name {
                "ping" => self.client.ping(rest.as_bytes())?,
                "binary" => match decode_hex(rest) {
                    Some(bytes) => self.client.send_binary(&bytes)?,
                    None => self.say("! :binary takes hex digits, e.g. :binary 00ff"),
                },
                "close" | "quit" => {
                    let (code, reason) = rest.split_once(' ').unwrap_or((rest, ""));
                    let code = code.parse().map(CloseCode).unwrap_or(CloseCode::NORMAL);
                    return Ok(Some((code, reason.to_string())));
                }
                _ => self.say(&format!("! unknown command :{name} (:ping, :binary, :close, :quit)")),
            }
            return Ok(None);
        }
        if !self.events {
            self.client.send_text(line)?;
            return Ok(None);
        }
        match self.envelope(line) {
            Ok(text) => self.client.send_text(&text)?,
            Err(why) => self.say(&format!("! {why}")),
        }
        Ok(None)
    }

    /// The emitws.v1 envelope for `/name data` or `?/name data`.
    fn envelope(&mut self, line: &str) -> Result<String, String> {
        let (request, line) = match line.strip_prefix('?') {
            Some(rest) => (true, rest),
            None => (false, line),
        };
        let (event, data) = line.trim().split_once(' ').unwrap_or((line.trim(), ""));
        if !event.starts_with('/') {
            return Err(format!("events start with /: {event} (try /ping, or ?/ping for a request)"));
        }
        let data = data.trim();
        let data: Value = match data {
            "" => Value::Null,
            _ => serde_json::from_str(data).unwrap_or_else(|_| Value::String(data.into())),
        };
        let envelope = if request {
            let id = self.next_id;
            self.next_id += 1;
            serde_json::json!([1, id, event, data])
        } else {
            serde_json::json!([0, event, data])
        };
        Ok(envelope.to_string())
    }

    fn say(&mut self, line: &str) {
        let _ = writeln!(self.out, "{line}");
        let _ = self.out.flush();
    }

    fn close(&mut self, code: CloseCode, reason: &str) -> Result<(), ClientError> {
        self.client.close(code, reason)
    }
}

/// A line describing a message; in events mode, with the answer a call from the server gets.
fn describe(message: Message<'_>, events: bool) -> (String, Option<String>) {
    match message {
        Message::Binary(bytes) => {
            let hex: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
            (format!("< binary {} bytes: {hex}", bytes.len()), None)
        }
        Message::Text(text) if events => describe_envelope(text),
        Message::Text(text) => (format!("< {text}"), None),
    }
}

/// A line describing an emitws.v1 envelope, and the answer a call from the server gets.
fn describe_envelope(text: &str) -> (String, Option<String>) {
    let Ok(parts) = serde_json::from_str::<Vec<&RawValue>>(text) else {
        return (format!("< (not an emitws.v1 envelope) {text}"), None);
    };
    let field = |i: usize| parts.get(i).map_or("null", |raw| raw.get());
    let name =
        |i: usize| parts.get(i).and_then(|raw| serde_json::from_str::<String>(raw.get()).ok()).unwrap_or_default();
    match field(0) {
        "0" => (format!("< {} {}", name(1), field(2)), None),
        "1" => {
            let answer = serde_json::json!([3, parts[1], {
                "code": "not_registered",
                "message": "emitws-cat has no procedures",
            }]);
            (
                format!("< call #{} {} {} (answered not_registered)", field(1), name(2), field(3)),
                Some(answer.to_string()),
            )
        }
        "2" => (format!("< #{} {}", field(1), field(2)), None),
        "3" => {
            #[derive(serde::Deserialize, Default)]
            struct Failure {
                code: String,
                #[serde(default)]
                message: String,
            }
            let failure: Failure = serde_json::from_str(field(2)).unwrap_or_default();
            (format!("< #{} error {}: {}", field(1), failure.code, failure.message), None)
        }
        _ => (format!("< {text}"), None),
    }
}

fn decode_hex(text: &str) -> Option<Vec<u8>> {
    let digits: Vec<u8> = text.bytes().filter(|b| !b.is_ascii_whitespace()).collect();
    if digits.len() % 2 != 0 {
        return None;
    }
    digits.chunks(2).map(|pair| u8::from_str_radix(std::str::from_utf8(pair).ok()?, 16).ok()).collect()
}
